//! vipa-probe: traffic for the testbed.
//!
//! ```text
//! vipa-probe serve --port P [--listen ADDR]
//! vipa-probe whoami --target ADDR:P [--bind ADDR]
//! vipa-probe stream --target ADDR:P --duration-ms N [--interval-ms N]   (prints a JSON report)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use vipa_testbed::probe;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = || -> SocketAddr {
        flag(&args, "--target").and_then(|t| t.parse().ok()).expect("--target ADDR:PORT ([v6]:port for IPv6)")
    };
    let result = match args.first().map(String::as_str) {
        Some("serve") => {
            let port = flag(&args, "--port").and_then(|p| p.parse().ok()).expect("--port P");
            let listen = flag(&args, "--listen").map(|a| a.parse().expect("--listen ADDR"));
            probe::serve(port, listen).map(|_| String::new())
        }
        Some("whoami") => {
            let bind = flag(&args, "--bind").map(|b| b.parse().expect("--bind ADDR"));
            probe::whoami(target(), bind)
        }
        Some("stream") => {
            let ms = flag(&args, "--duration-ms").and_then(|p| p.parse().ok()).unwrap_or(1000);
            let every = flag(&args, "--interval-ms").and_then(|p| p.parse().ok()).unwrap_or(1);
            probe::stream(target(), Duration::from_millis(ms), Duration::from_millis(every))
                .map(|r| serde_json::to_string(&r).expect("report"))
        }
        _ => {
            eprintln!("usage: vipa-probe serve|whoami|stream (see the source's header)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vipa-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
