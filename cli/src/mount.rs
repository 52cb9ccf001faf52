//! `irctl mount`'s arguments: parsed here ([`MountArgs`]), and made here for the mount the
//! local driver starts ([`command_line`]). The command itself runs in the binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::point_in_time::TargetArgs;
use crate::repo_args::{RepoArgs, RepoSpec, flag};

/// Exit code of `irctl mount` when the repository could not be reached (EX_TEMPFAIL).
pub const MOUNT_EXIT_TRANSIENT: i32 = 75;

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Backup id to mount, or `latest`.
    #[arg(long)]
    pub backup: String,
    /// IRCache directory: every write lands here. Reusing it after a crash keeps all fsynced
    /// writes; it is bound to the backup it was first used with.
    #[arg(long)]
    pub cache: PathBuf,
    /// Owner uid of the backup's files (the user PostgreSQL runs as).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of the backup's files.
    #[arg(long)]
    pub gid: Option<u32>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// In-memory chunk cache, MiB.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(0..=ir_fuse::MAX_MEMORY_CACHE_MIB))]
    pub memory_cache_mib: u64,
    /// The most chunks read ahead of a sequential reader: its window starts at 4 and doubles
    /// with each chunk it enters.
    #[arg(long, default_value_t = 8)]
    pub readahead_chunks: usize,
    /// With a target: PostgreSQL started on the mount replays the repository's WAL up to it
    /// (`recovery.signal` and `postgresql.auto.conf` are written on the mount), then promotes.
    /// With `--backup latest`, the newest backup that ends before the target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Where to mount: an existing empty directory.
    pub mountpoint: PathBuf,
}

/// The arguments of `irctl mount` (after `mount`) that serve `backup` of `repo` at
/// `mountpoint`, owned by `uid` and `gid`, writes going to `cache`; the other flags keep their
/// defaults. [`MountArgs`] reads them back as these values.
pub fn command_line(
    repo: &RepoSpec,
    backup: &str,
    cache: &Path,
    uid: u32,
    gid: u32,
    mountpoint: &Path,
) -> Vec<OsString> {
    // As RepoArgs reads them back: what StoreArgs::repo_spec made from them.
    let mut args: Vec<OsString> = (repo.location().cli_args())
        .into_iter()
        .map(OsString::from)
        .collect();
    args.extend([
        flag("--backup", backup),
        flag("--cache", cache),
        flag("--uid", uid.to_string()),
        flag("--gid", gid.to_string()),
        // Whatever its name, the mount point is not a flag.
        "--".into(),
        mountpoint.into(),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Mount {
        #[command(flatten)]
        args: MountArgs,
    }

    #[test]
    fn the_command_line_made_for_a_mount_reads_back_as_what_it_was_made_of() {
        let s3 = RepoSpec {
            url: "s3://bucket/prefix".into(),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_region: Some("eu-west-1".into()),
            allow_http: Some(true),
            read_deadline_secs: 5,
            key_file: Some("/etc/ir/key".into()),
        };
        let file = RepoSpec {
            url: "/srv/repo".into(),
            s3_endpoint: None,
            s3_region: None,
            allow_http: None,
            read_deadline_secs: 30,
            key_file: None,
        };
        // A workdir given as a relative path may start with `-`.
        for (repo, workdir) in [(s3, "/var/lib/ir/wd"), (file, "-wd")] {
            let cache = Path::new(workdir).join("ircache");
            let mountpoint = Path::new(workdir).join("mnt");
            let made = command_line(&repo, "20260101T000000Z-abcd", &cache, 70, 71, &mountpoint);
            let argv = std::iter::once(OsString::from("mount")).chain(made);
            let read = Mount::try_parse_from(argv).unwrap().args;
            assert_eq!(read.repo.store.repo_spec(&read.repo.repo), repo);
            assert_eq!(read.backup, "20260101T000000Z-abcd");
            assert_eq!(read.cache, cache);
            assert_eq!((read.uid, read.gid), (Some(70), Some(71)));
            assert_eq!(read.mountpoint, mountpoint);
            let defaults = (read.threads, read.memory_cache_mib, read.readahead_chunks);
            assert_eq!(defaults, (4, 256, 8));
        }
    }

    #[test]
    fn a_memory_cache_too_large_for_its_bytes_is_refused_by_name() {
        let parse = |mib: &str| {
            let flags = [
                "--repo",
                "/r",
                "--backup",
                "b",
                "--cache",
                "c",
                "--memory-cache-mib",
            ];
            Mount::try_parse_from(["mount"].iter().chain(&flags).chain(&[mib, "m"]))
        };
        let largest = ir_fuse::MAX_MEMORY_CACHE_MIB.to_string();
        assert_eq!(
            parse(&largest).unwrap().args.memory_cache_mib << 20,
            1 << 40
        );
        // Shifted into bytes, 2^44 MiB would wrap to 0.
        let err = parse("17592186044416").err().unwrap();
        assert!(err.to_string().contains("--memory-cache-mib"), "{err}");
    }
}
