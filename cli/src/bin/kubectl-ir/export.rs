//! `kubectl ir export`: `pg_dump` of a recovery's serving instance, streamed through the API
//! server (`pods/exec` into its PostgreSQL container) into a local file or stdout.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ir_api::crd::{InstantRecovery, POSTGRES_CONTAINER, PRIMARY_LABEL, RECOVERY_LABEL};
use ir_api::recovery::Phase;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{AttachParams, ListParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::commands::Namespace;

/// How much of pg_dump's stderr is kept (its end): the Pod decides how much it writes.
const STDERR_KEPT: usize = 64 << 10;
/// How often progress is told on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The exec'd shell reads the password from its stdin into `PGPASSWORD`, so that it is in
/// neither the command line the API server logs nor the Pod's process list; then it becomes
/// `pg_dump` with the arguments that follow, against the Pod IP PostgreSQL listens on (the
/// operator's `POD_IP` in the container's environment).
const WITH_PASSWORD_FROM_STDIN: &str = "IFS= read -r PGPASSWORD || exit 90; export PGPASSWORD; \
     exec pg_dump --host=\"${POD_IP:-127.0.0.1}\" \"$@\"";

/// pg_dump's formats that stream: `directory` needs a file system, which a stream has not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum StreamFormat {
    /// pg_restore's compressed archive.
    #[default]
    Custom,
    /// SQL for psql.
    Plain,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Name of the InstantRecovery (serving: Published, Syncing, ReadyForSwitchover or
    /// Completed).
    pub name: String,
    /// Only this table (pg_dump's pattern); repeat for more.
    #[arg(long, value_name = "TABLE")]
    pub table: Vec<String>,
    /// Only this schema (pg_dump's pattern); repeat for more.
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: StreamFormat,
    /// Database to dump.
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    pub dbname: String,
    /// Where the dump goes: a file, or `-` for standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: String,
}

pub async fn export(at: &Namespace, args: ExportArgs) -> anyhow::Result<()> {
    let named = format!("instantrecovery {}/{}", at.namespace, args.name);
    let recoveries: Api<InstantRecovery> = Api::namespaced(at.client.clone(), &at.namespace);
    let ir = recoveries
        .get_opt(&args.name)
        .await
        .with_context(|| format!("reading {named}"))?
        .with_context(|| format!("{named} not found"))?;
    let phase = ir.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if !matches!(
        phase,
        Phase::Published | Phase::Syncing | Phase::ReadyForSwitchover | Phase::Completed
    ) {
        bail!("{named} has no instance serving (phase {phase})");
    }
    let pod = serving_pod(at, &args.name).await?;
    let (user, password) = credentials(at, &ir.spec.postgres.credentials_secret.name).await?;

    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        WITH_PASSWORD_FROM_STDIN.to_owned(),
        "pg_dump".to_owned(),
        format!("--username={user}"),
        format!("--dbname={}", args.dbname),
        "--no-password".to_owned(),
        match args.format {
            StreamFormat::Custom => "--format=custom",
            StreamFormat::Plain => "--format=plain",
        }
        .to_owned(),
    ];
    command.extend(args.table.iter().map(|t| format!("--table={t}")));
    command.extend(args.schema.iter().map(|s| format!("--schema={s}")));

    let pods: Api<Pod> = Api::namespaced(at.client.clone(), &at.namespace);
    let params = AttachParams::default()
        .container(POSTGRES_CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(1 << 20);
    let mut attached = pods
        .exec(&pod, command, &params)
        .await
        .with_context(|| format!("running pg_dump in Pod {}/{pod}", at.namespace))?;
    let mut stdin = attached.stdin().context("the exec's stdin")?;
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .context("handing pg_dump the password")?;
    drop(stdin);
    let stdout = attached.stdout().context("the exec's stdout")?;
    let mut stderr = attached.stderr().context("the exec's stderr")?;
    let status = attached.take_status().context("the exec's status")?;
    let relay_stderr = read_tail(&mut stderr, STDERR_KEPT);
    let out: Box<dyn AsyncWrite + Unpin> = if args.output == "-" {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(&args.output)
                .await
                .with_context(|| format!("creating {}", args.output))?,
        )
    };
    let started = Instant::now();
    let (copied, messages) = tokio::join!(copy_with_progress(stdout, out), relay_stderr);
    let messages = String::from_utf8_lossy(&messages.unwrap_or_default()).into_owned();
    let status = status.await;
    attached.join().await.context("the exec stream")?;
    let written = copied.with_context(|| format!("writing {}", args.output))?;
    let succeeded = status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success");
    if !succeeded {
        let why = status.and_then(|s| s.message).unwrap_or_default();
        if args.output != "-" {
            let _ = tokio::fs::remove_file(&args.output).await;
        }
        bail!("pg_dump in Pod {pod} failed ({why}): {}", messages.trim());
    }
    if !messages.trim().is_empty() {
        eprint!("{messages}");
    }
    eprintln!(
        "kubectl ir export: {written} bytes of {} from Pod {pod} in {:.1} s",
        args.dbname,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Pod the recovery's Service sends clients to.
async fn serving_pod(at: &Namespace, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(at.client.clone(), &at.namespace);
    let selector = format!("{RECOVERY_LABEL}={name},{PRIMARY_LABEL}=true");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the Pods of {name}"))?;
    let running = list.items.into_iter().find(|p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    });
    running
        .and_then(|p| p.metadata.name)
        .with_context(|| format!("no running Pod serves {name} ({selector})"))
}

/// `username` and `password` of the recovery's superuser Secret.
async fn credentials(at: &Namespace, secret: &str) -> anyhow::Result<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(at.client.clone(), &at.namespace);
    let found = secrets
        .get(secret)
        .await
        .with_context(|| format!("reading Secret {}/{secret}", at.namespace))?;
    Ok((
        secret_value(secret, &found, "username")?,
        secret_value(secret, &found, "password")?,
    ))
}

/// `key` of Secret `name` as one line of text: `pg_dump`'s shell reads the password up to the
/// first line break, so a value holding one would be cut short rather than refused.
fn secret_value(name: &str, secret: &Secret, key: &str) -> anyhow::Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("Secret {name} has no key {key}"))?;
    let text = String::from_utf8(bytes.0.clone())
        .with_context(|| format!("Secret {name}: {key} is not UTF-8"))?;
    if text.contains(['\n', '\r', '\0']) {
        bail!("Secret {name}: {key} holds a line break or NUL");
    }
    Ok(text)
}

/// Reads `from` to its end, so that the stream never stalls, and keeps its last `keep` bytes.
async fn read_tail(mut from: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
}

/// Copies the dump, telling its size on stderr every few seconds.
async fn copy_with_progress(
    mut from: impl AsyncRead + Unpin,
    mut to: Box<dyn AsyncWrite + Unpin>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut told = Instant::now();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        written += n as u64;
        if told.elapsed() >= PROGRESS_EVERY {
            eprintln!("kubectl ir export: {} MiB written", written >> 20);
            told = Instant::now();
        }
    }
    to.flush().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(password: &[u8]) -> Secret {
        Secret {
            data: Some(
                [
                    ("username".to_owned(), ByteString(b"postgres".to_vec())),
                    ("password".to_owned(), ByteString(password.to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_the_end_of_a_flood_on_stderr_is_kept() {
        let mut flood = vec![b'x'; 10 << 20];
        flood.extend_from_slice(b"the last words");
        let tail = read_tail(&flood[..], 64).await.unwrap();
        assert_eq!(tail.len(), 64);
        assert!(tail.ends_with(b"the last words"));
        assert_eq!(read_tail(&b"short"[..], 64).await.unwrap(), b"short");
    }

    #[test]
    fn a_secret_value_is_one_line_of_text() {
        assert_eq!(
            secret_value("s", &secret(b"p4ss"), "password").unwrap(),
            "p4ss"
        );
        for (password, why) in [
            (&b"first\nsecond"[..], "line break"),
            (b"cr\r", "line break"),
            (b"nul\0", "NUL"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let err = secret_value("s", &secret(password), "password").unwrap_err();
            assert!(err.to_string().contains(why), "{password:?}: {err}");
        }
        let err = secret_value("s", &secret(b"x"), "token").unwrap_err();
        assert!(err.to_string().contains("has no key token"), "{err}");
    }
}
