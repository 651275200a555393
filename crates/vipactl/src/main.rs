//! vipactl: the operator's tool. It sends one request to vipad and renders the answer,
//! as the seeds' own commands print it (`ifconfig vi0`, `lsattr -El vi0`), or as JSON.
//! It never decides anything itself.

mod ipmpstat;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vipa_api::{Request, Response};

#[derive(Parser)]
#[command(version, about = "Control and inspect vipad")]
struct Cli {
    /// vipad's control socket.
    #[arg(long, global = true, default_value = vipa_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole daemon at a glance.
    Status,
    /// Show VIPAs as `ifconfig vi0` does; `-l NAME` shows one as `lsattr -El vi0` does.
    #[command(args_conflicts_with_subcommands = true)]
    Vipa {
        /// Show the attributes of this VIPA.
        #[arg(short = 'l', value_name = "NAME")]
        name: Option<String>,
        #[command(subcommand)]
        action: Option<VipaAction>,
    },
    /// Re-read the configuration file and apply the difference (as SIGHUP does).
    Reload,
    /// IPMP groups as `ipmpstat` shows them: one of -g, -i, -a, -t, -p.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["g", "i", "a", "t", "p"])))]
    Ipmp {
        /// Groups.
        #[arg(short = 'g')]
        g: bool,
        /// Interfaces.
        #[arg(short = 'i')]
        i: bool,
        /// Data addresses.
        #[arg(short = 'a')]
        a: bool,
        /// Probe targets.
        #[arg(short = 't')]
        t: bool,
        /// Probes, live, until interrupted.
        #[arg(short = 'p')]
        p: bool,
        /// Output fields, comma-separated, or `all`.
        #[arg(short = 'o', value_name = "FIELDS")]
        fields: Option<String>,
        /// Parsable output (`:`-separated, no header); needs -o.
        #[arg(short = 'P', requires = "fields")]
        parsable: bool,
        /// Numeric output (addresses are always numeric here).
        #[arg(short = 'n')]
        numeric: bool,
    },
    /// Take an IPMP member out of use, as `if_mpadm -d`.
    Offline { interface: String },
    /// Put an offlined IPMP member back, as `if_mpadm -r`.
    Online { interface: String },
    /// Print events (state changes, address moves, probe results) as they happen.
    Events,
    /// Cluster members as this node sees them; `keygen FILE` makes a cluster key.
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// Dynamic VIPAs (netstat VIPADYN); move, deactivate, reactivate.
    Dvipa {
        #[command(subcommand)]
        action: Option<DvipaAction>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Write a new random cluster key (32 random bytes as hex) to FILE, mode 0600.
    Keygen { file: PathBuf },
}

#[derive(Subcommand)]
enum DvipaAction {
    /// Move ADDRESS to NODE by handover (the holder releases, then NODE activates).
    Move { address: String, node: String },
    /// Give ADDRESS up on this node; a backup takes over (VARY ... DEACTIVATE).
    Deactivate { address: String },
    /// Let this node hold ADDRESS again (VARY ... REACTIVATE).
    Reactivate { address: String },
}

#[derive(Subcommand)]
enum VipaAction {
    /// Add a VIPA (AIX mkinetvi): written to the configuration file, then applied.
    Add {
        name: String,
        /// An address of the VIPA, IPv4 or IPv6; repeat for more.
        #[arg(short, long = "address", required = true)]
        addresses: Vec<String>,
        /// A source interface; repeat for more.
        #[arg(short, long = "interface")]
        interfaces: Vec<String>,
    },
    /// Remove a VIPA: its addresses go and its routes get their sources back.
    Delete { name: String },
    /// Add or remove source interfaces of a VIPA (AIX chvi).
    #[command(alias = "chvi")]
    Change {
        name: String,
        /// Interface to add; repeat for more.
        #[arg(long)]
        add: Vec<String>,
        /// Interface to remove; repeat for more.
        #[arg(long)]
        remove: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Cluster { action: Some(ClusterAction::Keygen { file }) } => return keygen(file),
        Command::Ipmp { g, i, a, t, p, fields, parsable, .. } => {
            return ipmp(&cli, (*g, *i, *a, *t, *p), fields.as_deref(), *parsable)
        }
        Command::Events => return events(&cli),
        _ => {}
    }
    let request = match cli.command {
        Command::Ipmp { .. } | Command::Events | Command::Cluster { action: Some(_) } => unreachable!("handled above"),
        Command::Cluster { action: None } => Request::Cluster,
        Command::Dvipa { action: None } => Request::Dvipas,
        Command::Dvipa { action: Some(DvipaAction::Move { address, node }) } => Request::DvipaMove { address, node },
        Command::Dvipa { action: Some(DvipaAction::Deactivate { address }) } => Request::DvipaDeactivate { address },
        Command::Dvipa { action: Some(DvipaAction::Reactivate { address }) } => Request::DvipaReactivate { address },
        Command::Offline { interface } => Request::Offline { interface },
        Command::Online { interface } => Request::Online { interface },
        Command::Status => Request::Status,
        Command::Reload => Request::Reload,
        Command::Vipa { name: Some(name), .. } => Request::Vipa { name },
        Command::Vipa { action: None, .. } => Request::Vipas,
        Command::Vipa { action: Some(a), .. } => match a {
            VipaAction::Add { name, addresses, interfaces } => Request::AddVipa { name, addresses, interfaces },
            VipaAction::Delete { name } => Request::DeleteVipa { name },
            VipaAction::Change { name, add, remove } => Request::ChangeInterfaces { vipa: name, add, remove },
        },
    };
    let response = match vipa_api::call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => return connect_error(&cli.socket, &e),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&response).expect("views serialise"));
        return if matches!(response, Response::Error { .. }) { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    match response {
        Response::Error { message } => {
            eprintln!("vipactl: {message}");
            ExitCode::FAILURE
        }
        Response::Status(s) => {
            print!("{}", render::status(&s));
            ExitCode::SUCCESS
        }
        Response::Vipas { vipas } => {
            for v in &vipas {
                print!("{}", render::ifconfig(v));
            }
            ExitCode::SUCCESS
        }
        Response::Vipa(v) => {
            print!("{}", render::lsattr(&v));
            ExitCode::SUCCESS
        }
        Response::Applied(r) => {
            print!("{}", render::applied(&r));
            ExitCode::SUCCESS
        }
        Response::Done { message } => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Response::Ipmp(_) => ExitCode::SUCCESS,
        Response::Cluster(c) => {
            print!("{}", render::cluster(&c));
            ExitCode::SUCCESS
        }
        Response::Dvipas { dvipas } => {
            print!("{}", render::vipadyn(&dvipas));
            ExitCode::SUCCESS
        }
    }
}

fn keygen(file: &std::path::Path) -> ExitCode {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        eprintln!("vipactl: cannot read /dev/urandom: {e}");
        return ExitCode::FAILURE;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let opened = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file);
    match opened.and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes())) {
        Ok(()) => {
            println!(
                "wrote a new cluster key to {} (mode 600); copy it to every node and set [cluster] key_file",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "vipactl: {} exists; a key is never overwritten (remove it first if you mean to replace it)",
                file.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vipactl: cannot write {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// vipad could not be reached: what failed, and a hint when nothing listens there.
fn connect_error(socket: &std::path::Path, e: &std::io::Error) -> ExitCode {
    eprintln!("vipactl: cannot talk to vipad at {}: {e}", socket.display());
    if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::ConnectionRefused {
        eprintln!("vipactl: is vipad running? (give its socket with --socket)");
    }
    ExitCode::from(2)
}

fn ipmp(cli: &Cli, (g, i, a, t, p): (bool, bool, bool, bool, bool), fields: Option<&str>, parsable: bool) -> ExitCode {
    let view = match vipa_api::call(&cli.socket, &Request::Ipmp) {
        Ok(Response::Ipmp(v)) => v,
        Ok(Response::Error { message }) => {
            eprintln!("vipactl: {message}");
            return ExitCode::FAILURE;
        }
        Ok(_) => {
            eprintln!("vipactl: unexpected answer from vipad");
            return ExitCode::FAILURE;
        }
        Err(e) => return connect_error(&cli.socket, &e),
    };
    if p {
        return probes(cli, &view, fields, parsable);
    }
    if cli.json {
        let value = if g {
            serde_json::to_value(&view.groups)
        } else if i {
            serde_json::to_value(&view.interfaces)
        } else if a {
            serde_json::to_value(&view.addresses)
        } else {
            serde_json::to_value(&view.targets)
        };
        println!("{}", serde_json::to_string_pretty(&value.expect("views serialise")).expect("json"));
        return ExitCode::SUCCESS;
    }
    let (all, rows) = if g {
        (ipmpstat::GROUP, ipmpstat::group_rows(&view))
    } else if i {
        (ipmpstat::INTERFACE, ipmpstat::interface_rows(&view))
    } else if a {
        (ipmpstat::ADDRESS, ipmpstat::address_rows(&view))
    } else {
        let _ = t;
        (ipmpstat::TARGET, ipmpstat::target_rows(&view))
    };
    match ipmpstat::select(all, fields) {
        Ok(sel) => {
            print!("{}", ipmpstat::table(&sel, &rows, parsable));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vipactl: {e}");
            ExitCode::from(2)
        }
    }
}

fn probes(cli: &Cli, view: &vipa_api::IpmpView, fields: Option<&str>, parsable: bool) -> ExitCode {
    if !view.targets.iter().any(|t| t.testaddr.is_some()) {
        eprintln!("vipactl: probe-based failure detection is disabled");
        return ExitCode::FAILURE;
    }
    let sel = match ipmpstat::select(ipmpstat::PROBE, fields) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vipactl: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let mut base: Option<f64> = None;
    let mut header = !parsable;
    let json = cli.json;
    let r = vipa_api::stream_events(&cli.socket, |e| {
        let b = *base.get_or_insert(e.time - started.elapsed().as_secs_f64());
        if e.kind != "probe" {
            return true;
        }
        if json {
            println!("{}", serde_json::to_string(&e).expect("json"));
            return true;
        }
        if let Some(row) = ipmpstat::probe_row(&e, b) {
            let out = ipmpstat::table(&sel, &[row], parsable);
            let out =
                if header { out } else { out.lines().skip(usize::from(!parsable)).map(|l| format!("{l}\n")).collect() };
            header = false;
            print!("{out}");
        }
        true
    });
    match r {
        Ok(()) => {
            eprintln!(
                "vipactl: the event stream ended: vipad stopped, or this client fell more than 1,024 events behind"
            );
            ExitCode::FAILURE
        }
        Err(e) => connect_error(&cli.socket, &e),
    }
}

fn events(cli: &Cli) -> ExitCode {
    let json = cli.json;
    let r = vipa_api::stream_events(&cli.socket, |e| {
        if json {
            println!("{}", serde_json::to_string(&e).expect("json"));
        } else {
            let who =
                [e.group.as_deref(), e.interface.as_deref()].iter().flatten().copied().collect::<Vec<_>>().join("/");
            println!("{:>10.3} {:<8} {:<14} {}", e.time, e.kind, who, e.text);
        }
        true
    });
    match r {
        Ok(()) => {
            eprintln!(
                "vipactl: the event stream ended: vipad stopped, or this client fell more than 1,024 events behind"
            );
            ExitCode::FAILURE
        }
        Err(e) => connect_error(&cli.socket, &e),
    }
}
