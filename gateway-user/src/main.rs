//! `gateway`: the daemon and its command line (see `gateway_user::cli`).

fn main() -> std::process::ExitCode {
    gateway_user::cli::main()
}
