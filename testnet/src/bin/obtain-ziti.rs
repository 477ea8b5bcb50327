//! Prints the path of the `ziti` binary the tests use, building and caching it first if needed.
use std::process::ExitCode;

fn main() -> ExitCode {
    match testnet::ziti_bin::obtain() {
        Ok(p) => {
            println!("{}", p.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
