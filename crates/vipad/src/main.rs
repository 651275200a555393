//! vipad: the vipa daemon, one per host or network namespace.
//!
//! Start-up order: parse the configuration (refuse to start on any error, touching
//! nothing), subscribe to kernel events, dump the kernel, adopt what is already there,
//! then apply only the difference. A restarted or SIGKILLed vipad therefore never
//! removes and re-adds an address or route on its way up.

mod announce;
mod answer;
mod cluster;
mod control;
mod daemon;
mod edit;
mod ipmp;
mod reach;
mod views;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};
use vipa_core::DeviceMode;
use vipa_kernel::{EventError, Events, Kernel};

use crate::daemon::{Daemon, Input};

#[derive(Parser)]
#[command(version, about = "vipa daemon: IP addresses that outlive the NICs and hosts under them")]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = vipa_api::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Control socket for vipactl. Each vipad on a machine needs its own.
    #[arg(long, default_value = vipa_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where vipad remembers what it changed (routes' and sysctls' originals).
    /// Default: beside the socket, named after it with `.state`.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Validate FILE (syntax, model, and against this host's interfaces) and exit;
    /// changes nothing.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIPA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(file) = &args.check {
        std::process::exit(check(file, &state_path(&args)));
    }
    if let Err(e) = run(args) {
        error!("{e:#}");
        eprintln!("vipad: {e:#}");
        std::process::exit(1);
    }
}

/// Where vipad remembers what it changed.
fn state_path(args: &Args) -> PathBuf {
    args.state.clone().unwrap_or_else(|| args.socket.with_extension("state"))
}

/// `vipad --check FILE`: reads the kernel (never writes it) to check against it, and the
/// ledger at `state` (what a running vipad put there is not someone else's).
fn check(file: &Path, state: &Path) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return 1;
        }
    };
    let observed = Kernel::open().and_then(|mut k| {
        let updates = k.snapshot()?;
        Ok(daemon::observe(&mut k, updates))
    });
    let mode = if Path::new("/sys/module/dummy").exists() { DeviceMode::Dummy } else { DeviceMode::Loopback };
    let observed = match observed {
        Ok(o) => o,
        Err(e) => {
            eprintln!("note: cannot read the kernel ({e}); interface checks skipped");
            Default::default()
        }
    };
    match daemon::validate(file, &text, &observed, &daemon::load_ledger(state), mode) {
        Ok((config, warnings)) => {
            for w in &warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: OK ({} VIPA{})",
                file.display(),
                config.vipas.len(),
                if config.vipas.len() == 1 { "" } else { "s" }
            );
            0
        }
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let state_path = state_path(&args);

    let events = Events::subscribe().context("cannot subscribe to kernel events (vipad needs CAP_NET_ADMIN)")?;
    let mut kernel = Kernel::open().context("cannot open netlink")?;
    let (mode, mode_note) = if Path::new("/sys/module/dummy").exists() || kernel.dummy_supported() {
        (DeviceMode::Dummy, "one dummy device per VIPA, named after it".to_string())
    } else {
        (DeviceMode::Loopback, "the kernel has no dummy driver: VIPA addresses go on lo".to_string())
    };
    info!(mode = ?mode, note = %mode_note, "VIPA device");
    let updates = kernel.snapshot().context("cannot read kernel state")?;
    let observed = daemon::observe(&mut kernel, updates);
    let ledger = daemon::load_ledger(&state_path);

    let (config, warnings) = if args.config.exists() {
        daemon::load_config(&args.config, &observed, &ledger, mode)
            .map_err(|m| anyhow::anyhow!("{m}\nvipad did not start; nothing was changed"))?
    } else {
        let w = format!(
            "{}: no configuration file; running with no VIPAs until one is written (vipactl vipa add, or write it and reload)",
            args.config.display()
        );
        (vipa_core::Config::empty(), vec![w])
    };
    for w in &warnings {
        warn!(warning = %w, "configuration");
    }
    let node = config.node_name.clone().unwrap_or_else(hostname);
    let listener =
        control::bind(&args.socket).with_context(|| format!("cannot listen on {}", args.socket.display()))?;

    let (tx, rx) = mpsc::channel();
    {
        let tx = tx.clone();
        let mut events = events;
        thread::Builder::new().name("netlink-events".into()).spawn(move || loop {
            let input = match events.recv() {
                Ok(updates) if updates.is_empty() => continue,
                Ok(updates) => Input::Kernel(updates),
                Err(EventError::Overflow) => Input::Resync("netlink event socket overflowed".into()),
                Err(EventError::Io(e)) => {
                    error!(error = %e, "netlink event socket failed");
                    thread::sleep(std::time::Duration::from_millis(100));
                    Input::Resync(format!("event socket error: {e}"))
                }
            };
            if tx.send(input).is_err() {
                return;
            }
        })?;
    }
    {
        let tx = tx.clone();
        thread::Builder::new().name("control".into()).spawn(move || control::serve(listener, tx))?;
    }
    {
        let tx = tx.clone();
        let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
        thread::Builder::new().name("signals".into()).spawn(move || {
            for sig in signals.forever() {
                let input = match sig {
                    SIGHUP => Input::Reload,
                    SIGTERM => Input::Stop("SIGTERM"),
                    _ => Input::Stop("SIGINT"),
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
        })?;
    }
    let epoch = std::time::Instant::now();
    let ipmp = ipmp::Ipmp::new(epoch);
    if let Some(c) = &config.cluster {
        daemon::forget_unresolved_peers(&mut kernel, c, &observed, None);
    }
    let cluster = cluster::ClusterShell::start(&config, &observed, tx.clone(), epoch)
        .map_err(|m| anyhow::anyhow!("{m}\nvipad did not start; nothing was changed"))?;
    drop(tx);
    let nft = if config.groups.is_empty() { Ok(()) } else { vipa_kernel::nft::available() };
    if let Err(why) = &nft {
        warn!(reason = %why, "IPMP ARP binding unavailable");
    }

    info!(
        config = %args.config.display(),
        socket = %args.socket.display(),
        state = %state_path.display(),
        vipas = config.vipas.len(),
        node = %node,
        "vipad started"
    );
    let mut d = Daemon {
        config,
        config_path: args.config.clone(),
        socket_path: args.socket.clone(),
        state_path,
        node,
        kernel,
        observed,
        ledger,
        mode,
        mode_note,
        warnings,
        started: std::time::Instant::now(),
        counters: Default::default(),
        last_reload_error: None,
        ipmp,
        arp_applied: None,
        nft,
        cluster,
        refresh_due: Vec::new(),
        reach: Default::default(),
        answering: Default::default(),
        announcer: announce::Announcer::start(),
        more: false,
        trailing_left: 0,
        releases_left: 0,
    };
    d.run(rx);
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
