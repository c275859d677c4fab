//! `comfaas secret set NAME` / `rm NAME` / `ls`: the secrets functions
//! read as files (`secrets = ["NAME"]` in their manifest), kept in the KV
//! bucket `comfaas_secrets`. A value is read from stdin or a file, never
//! from the command line (where shell history and `ps` would keep it), and
//! never printed: `ls` shows names only.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::Context as _;
use comfaas_platform::secrets::SecretStore;

/// Reads a secret's value: the whole of `file`, or of stdin. Exactly the
/// bytes read (a trailing newline too: use `printf`, not `echo`, when it
/// matters); an empty value is refused, as it is nearly always a mistake.
pub fn read_value(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let value = match file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading the secret from stdin; end with Ctrl-D");
            }
            let mut value = Vec::new();
            stdin
                .read_to_end(&mut value)
                .context("cannot read the secret from stdin")?;
            value
        }
    };
    if value.is_empty() {
        anyhow::bail!("the secret's value is empty (pipe it on stdin or use --from-file FILE)");
    }
    Ok(value)
}

/// `comfaas secret set NAME`: stores `value` as `name`.
pub async fn set(store: &SecretStore, name: &str, value: &[u8]) -> anyhow::Result<()> {
    store.set(name, value).await?;
    println!("secret {name} set ({} bytes)", value.len());
    Ok(())
}

/// `comfaas secret rm NAME`.
pub async fn rm(store: &SecretStore, name: &str) -> anyhow::Result<()> {
    if !store.remove(name).await? {
        anyhow::bail!("secret {name} is not set");
    }
    println!("secret {name} removed");
    Ok(())
}

/// `comfaas secret ls`: the names, one a line; never a value.
pub async fn ls(store: &SecretStore) -> anyhow::Result<()> {
    let names = store.names().await?;
    if names.is_empty() {
        println!("no secrets set");
    }
    for name in names {
        println!("{name}");
    }
    Ok(())
}
