//! `irctl publish | unpublish | abort | export`: bring a backup up only to look at it, take
//! tables out of it with `pg_dump`, and end a publish or give a recovery up.
//!
//! `irctl publish` runs the engine until the backup serves, then hands the workdir to a keeper
//! (`irctl publish --workdir DIR --keep`, in its own session) that keeps it serving and tears it
//! down when its TTL ends or an unpublish arrives. `irctl recover --workdir DIR
//! --target-pgdata ...` stops the keeper and goes on from the publish to a recovery.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use ir_api::GoDuration;
use ir_api::recovery::{Phase, RecoveryMode};
use ir_cli::local::{Goal, LocalRecovery, LocalState, Rerun, Workdir};
use ir_engine::machine::EndRequest;
use ir_engine::postgres::PgBinaries;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bring_up::{BringUpArgs, WorkdirArgs, run_printing};
use crate::keeper::start_keeper;

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: BringUpArgs,
    /// Tear the publish down this long after it first answered a query (30m, 2h). Default:
    /// until `irctl unpublish`.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<GoDuration>,
    /// Serve the backup read-only: a hot standby with default_transaction_read_only, so that
    /// a look never writes to the IRCache. It cannot go on to a recovery.
    #[arg(long)]
    pub read_only: bool,
    /// Keep the publish serving until its TTL or an unpublish (what `irctl publish` starts in
    /// the background once the backup serves).
    #[arg(long, hide = true)]
    pub keep: bool,
}

/// How long an unpublish or abort waits for the process that holds the workdir to tear down.
const END_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let dir = &args.common.workdir;
    let workdir = Workdir::new(dir);
    if args.keep {
        return keep(workdir).await;
    }
    let mut spec = args.common.spec(RecoveryMode::Publish, None);
    if let Some(spec) = &mut spec {
        if args.read_only && spec.point_in_time.is_some() {
            anyhow::bail!(
                "--read-only publishes a backup as it was taken: leave out the --target-* flags"
            );
        }
        spec.publish_ttl = args.ttl;
        spec.read_only = args.read_only;
    }
    if spec.is_none() && workdir.load()?.is_none() {
        anyhow::bail!(
            "no publish in {}: --repo and --backup are needed to start one",
            dir.display()
        );
    }
    let rerun = args.common.rerun(RecoveryMode::Publish);
    let program = std::env::current_exe().context("locating the irctl binary")?;
    let mut recovery = LocalRecovery::open(workdir.clone(), spec, rerun, program)?;
    run_printing(&mut recovery, Goal::Serving, dir).await?;
    let conninfo = recovery.published_conninfo();
    let status = recovery.status().clone();
    if status.phase != Phase::Published {
        println!(
            "stopped in phase {}; run `irctl publish --workdir {}` to continue",
            status.phase,
            dir.display()
        );
        return Ok(());
    }
    // The keeper takes the workdir's lock over.
    drop(recovery);
    start_keeper(&workdir)?;
    let until = match status.expires_at {
        Some(at) => format!("until {at}"),
        None => "until unpublished".to_owned(),
    };
    println!("published: {conninfo} ({until})");
    println!(
        "export tables with `irctl export --workdir {0} --output FILE --table T`; end it with \
         `irctl unpublish --workdir {0}`, or go on to a recovery with `irctl recover --workdir \
         {0} --target-pgdata DIR`",
        dir.display()
    );
    Ok(())
}

/// The keeper: the engine until the publish ends (or becomes a recovery, which stops it).
async fn keep(workdir: Workdir) -> anyhow::Result<()> {
    let rerun = Rerun {
        mode: Some(RecoveryMode::Publish),
        ..Default::default()
    };
    let program = std::env::current_exe().context("locating the irctl binary")?;
    let mut recovery = LocalRecovery::open(workdir.clone(), None, rerun, program)?;
    run_printing(&mut recovery, Goal::End, &workdir.root).await
}

pub async fn unpublish(args: WorkdirArgs) -> anyhow::Result<()> {
    end(&args.workdir, EndRequest::Unpublish).await
}

pub async fn abort(args: WorkdirArgs) -> anyhow::Result<()> {
    end(&args.workdir, EndRequest::Abort).await
}

/// Asks for the end, has it carried out (by the process that holds the workdir, or here), and
/// prints what was torn down.
async fn end(dir: &Path, request: EndRequest) -> anyhow::Result<()> {
    let workdir = Workdir::new(dir);
    let state = load(&workdir)?;
    if request == EndRequest::Unpublish && state.spec.mode != RecoveryMode::Publish {
        anyhow::bail!(
            "{} holds a recovery, not a publish: give it up with `irctl abort --workdir {}`",
            dir.display(),
            dir.display()
        );
    }
    if let Some(why) = switched_over(&state) {
        anyhow::bail!("refused: {why}; nothing was torn down (the target may be the primary)");
    }
    if !ended(&state) {
        workdir.request_end(request)?;
        if !handled_by_holder(&workdir).await? {
            let program = std::env::current_exe().context("locating the irctl binary")?;
            let mut recovery =
                LocalRecovery::open(workdir.clone(), None, Rerun::default(), program)?;
            run_printing(&mut recovery, Goal::End, dir).await?;
        }
    }
    let state = load(&workdir)?;
    if !ended(&state) {
        anyhow::bail!(
            "not torn down: the recovery is in phase {} ({})",
            state.status.phase,
            state.status.message.unwrap_or_default()
        );
    }
    println!("{} ({})", state.status.phase, dir.display());
    for line in &state.torn_down {
        println!("  {line}");
    }
    Ok(())
}

fn load(workdir: &Workdir) -> anyhow::Result<LocalState> {
    workdir.load()?.with_context(|| {
        format!(
            "no recovery in {} (recovery.json not found)",
            workdir.root.display()
        )
    })
}

fn ended(state: &LocalState) -> bool {
    state.status.ended() && state.status.timings.ended_at.is_some()
}

/// Why tearing down is refused: the switchover began.
fn switched_over(state: &LocalState) -> Option<String> {
    let status = &state.status;
    status
        .switchover_began()
        .then(|| format!("the switchover began (phase {})", status.phase))
}

/// Waits while the process holding the workdir takes the request up; false when none holds it
/// (any more) and the request is still to be carried out.
async fn handled_by_holder(workdir: &Workdir) -> anyhow::Result<bool> {
    let deadline = Instant::now() + END_TIMEOUT;
    while workdir.is_running() {
        let state = load(workdir)?;
        if ended(&state) || switched_over(&state).is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{}: the irctl working on it did not tear down within {} s; see its output",
                workdir.root.display(),
                END_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(ended(&load(workdir)?))
}

/// `pg_dump`'s output formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// pg_restore's compressed archive.
    #[default]
    Custom,
    /// A directory of pg_restore's archive (`--output` names the directory).
    Directory,
    /// SQL for psql.
    Plain,
}

impl DumpFormat {
    fn flag(self) -> &'static str {
        match self {
            DumpFormat::Custom => "--format=custom",
            DumpFormat::Directory => "--format=directory",
            DumpFormat::Plain => "--format=plain",
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Working directory of the publish (or recovery) whose published instance is dumped.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
    /// Where the dump goes: a file, `-` for standard output, or a directory for
    /// `--format directory`.
    #[arg(long, value_name = "FILE")]
    pub output: String,
    /// Only this table (pg_dump's pattern); repeat for more.
    #[arg(long, value_name = "TABLE")]
    pub table: Vec<String>,
    /// Only this schema (pg_dump's pattern); repeat for more.
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: DumpFormat,
    /// Database to dump. Default: the one the recovery connects to (--db-name).
    #[arg(long, value_name = "NAME")]
    pub dbname: Option<String>,
}

/// Runs the backup's major version's `pg_dump` against the published instance, with progress
/// on standard error.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let workdir = Workdir::new(&args.workdir);
    let state = load(&workdir)?;
    let serving = matches!(
        state.status.phase,
        Phase::Published | Phase::Syncing | Phase::ReadyForSwitchover
    );
    if !serving {
        anyhow::bail!(
            "{}: the published instance does not serve (phase {})",
            args.workdir.display(),
            state.status.phase
        );
    }
    let spec = &state.spec;
    let major = state.status.backup.as_ref().map_or(0, |b| b.pg_major);
    let bins = PgBinaries::find(major, spec.pg_bindir.as_deref())?;
    let to_stdout = args.output == "-";
    if to_stdout && args.format == DumpFormat::Directory {
        anyhow::bail!("--format directory writes a directory: give it as --output");
    }
    let mut command = tokio::process::Command::new(bins.path("pg_dump"));
    command
        .arg("--host")
        .arg(workdir.sockets())
        .arg("--port")
        .arg(spec.published_port.to_string())
        .arg("--username")
        .arg(&spec.db_user)
        .arg("--dbname")
        .arg(args.dbname.as_deref().unwrap_or(&spec.db_name))
        .arg("--no-password")
        .arg(args.format.flag());
    for table in &args.table {
        command.arg("--table").arg(table);
    }
    for schema in &args.schema {
        command.arg("--schema").arg(schema);
    }
    if args.format == DumpFormat::Directory {
        command.arg("--file").arg(&args.output);
        command.stdout(Stdio::null());
    } else {
        command.stdout(Stdio::piped());
    }
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = command.spawn().context("starting pg_dump")?;
    let written = match child.stdout.take() {
        Some(mut dump) => {
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if to_stdout {
                Box::new(tokio::io::stdout())
            } else {
                let file = tokio::fs::File::create(&args.output)
                    .await
                    .with_context(|| format!("creating {}", args.output))?;
                Box::new(file)
            };
            let mut buf = vec![0u8; 1 << 20];
            let mut written = 0u64;
            let mut told = Instant::now();
            loop {
                let n = dump
                    .read(&mut buf)
                    .await
                    .context("reading pg_dump's output")?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .await
                    .with_context(|| format!("writing {}", args.output))?;
                written += n as u64;
                if told.elapsed() >= Duration::from_secs(2) {
                    eprintln!("irctl export: {} MiB written", written >> 20);
                    told = Instant::now();
                }
            }
            out.flush().await.context("flushing the dump")?;
            Some(written)
        }
        None => None,
    };
    let exit = child.wait().await.context("waiting for pg_dump")?;
    if !exit.success() {
        anyhow::bail!("pg_dump failed ({exit}); its messages are above");
    }
    let size = written.map_or_else(String::new, |w| format!(", {w} bytes"));
    eprintln!(
        "irctl export: done in {:.1} s{size}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
