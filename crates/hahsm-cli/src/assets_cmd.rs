//! `hahsm generate-assets DIR` (hidden): the man pages and shell completions
//! that the `hahsm` Debian package installs, generated from the clap
//! definitions themselves, so they always match the binary.
//! `scripts/build-debs.sh` runs it before cargo-deb.
use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateAssetsArgs {
    /// Where to write `man/*.1` and `completions/{hahsm.bash,_hahsm,hahsm.fish}`.
    dir: PathBuf,
}

pub fn run(args: GenerateAssetsArgs) -> anyhow::Result<()> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // hahsm.1, and one page per subcommand (hahsm-ha.1, hahsm-ha-show.1, …);
    // hidden commands (this one) have none.
    clap_mangen::generate_to(command(), &man)
        .with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = command();
        clap_complete::generate_to(shell, &mut cmd, "hahsm", &completions).with_context(|| {
            format!(
                "cannot write the {shell} completions to {}",
                completions.display()
            )
        })?;
    }
    let pages = count(&man)?;
    println!(
        "{pages} man pages in {}, completions for bash, zsh and fish in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

fn command() -> clap::Command {
    crate::Cli::command()
}

fn count(dir: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count())
}
