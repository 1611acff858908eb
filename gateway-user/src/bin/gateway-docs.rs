//! `gateway-docs DIR`: writes the man pages (`gateway.1` and one `gateway-VERB.1` per verb) and
//! the bash, zsh and fish completions of `gateway`, generated from its clap definitions, under
//! DIR (`man1/`, `completions/`). `cargo xtask package` puts them in the Debian package.

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap_complete::Shell;

fn write_man(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut out = Vec::new();
    // clap names commands with static strings (without its `string` feature); this program
    // writes a few files and exits.
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(name))
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

fn run(out: PathBuf) -> anyhow::Result<()> {
    let mut cmd = gateway_user::cli::command();
    cmd.build();
    let man = out.join("man1");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_man(&cmd, "gateway", &man)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man(sub, &format!("gateway-{}", sub.get_name()), &man)?;
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "gateway", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
        eprintln!("{}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gateway-docs DIR");
        return ExitCode::from(2);
    };
    match run(out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
