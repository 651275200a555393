//! vipactl: the operator's tool. It sends one request to vipad and renders the answer,
//! as the seeds' own commands print it (`ifconfig vi0`, `lsattr -El vi0`), or as JSON.
//! It never decides anything itself.

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
    let request = match cli.command {
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
        Err(e) => {
            eprintln!("vipactl: cannot talk to vipad at {}: {e}", cli.socket.display());
            if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::ConnectionRefused {
                eprintln!("vipactl: is vipad running? (give its socket with --socket)");
            }
            return ExitCode::from(2);
        }
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
    }
}
