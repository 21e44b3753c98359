//! Disk faults in the middle of a run over HTTP (quickstart grid against a `sim-server`):
//!
//! - **full disk**: the run directory lives on a small tmpfs that a filler file fills up while
//!   `roleplay run` works. The run must stop with a clear `error:` naming the journal, the OS
//!   reason and a `hint:`, exit 1, and leave journals that read; running again while the disk is
//!   still full fails the same way and keeps every record; once the filler is gone the same command
//!   finishes every unit exactly once without repeating a journaled call.
//! - **read-only file system**: the run directory lives on an ext4 image mounted with
//!   `errors=remount-ro`, and the test triggers a file-system error mid-run, so the kernel makes it
//!   read-only under the running workers (the way a failing disk or a fenced network file system
//!   does; `mount -o remount,ro` is refused while files are open for writing). Same expectations,
//!   except that records not yet fsynced when the disk went read-only (the documented group-commit
//!   window) may be lost and their calls made again; resuming after `e2fsck` and a fresh mount
//!   finishes every unit exactly once.
//! - **read-only before a resume**: a finished-but-interrupted run directory remounted read-only
//!   refuses to run with a clear error and changes nothing.
//!
//! These tests mount file systems: they need root (or CAP_SYS_ADMIN) and loop devices. Where that
//! is not permitted they fail with a message saying so; they never skip.

use crate::common::*;
use roleplay::rundir::journal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Run a system command; panic with its output unless it succeeds (or `ok` accepts the code).
fn sh(cmd: &str, args: &[&str], ok: &[i32]) -> std::process::Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e} (the disk-fault tests need util-linux and e2fsprogs)"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        out.status.success() || ok.contains(&code),
        "`{cmd} {}` failed ({}): {}{}\nthe disk-fault tests mount file systems and need root (CAP_SYS_ADMIN) and loop devices",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A mounted file system, unmounted when dropped (lazily if it is still busy).
struct Mount {
    at: PathBuf,
    /// The ext4 image behind a loop mount.
    image: Option<PathBuf>,
}

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                at.to_str().unwrap(),
            ],
            &[],
        );
        Mount {
            at: at.to_path_buf(),
            image: None,
        }
    }

    /// An ext4 image on a loop device that turns read-only on the first file-system error.
    fn ext4(at: &Path, image: &Path, mb: u64) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let f = std::fs::File::create(image).unwrap();
        f.set_len(mb << 20).unwrap();
        drop(f);
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()], &[]);
        let m = Mount {
            at: at.to_path_buf(),
            image: Some(image.to_path_buf()),
        };
        m.mount_image();
        m
    }

    fn mount_image(&self) {
        let image = self.image.as_ref().expect("an ext4 mount");
        sh(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                image.to_str().unwrap(),
                self.at.to_str().unwrap(),
            ],
            &[],
        );
    }

    /// The loop device's name (`loop3`), for `/sys/fs/ext4/<dev>/`.
    fn device(&self) -> String {
        let out = sh("findmnt", &["-n", "-o", "SOURCE", self.at.to_str().unwrap()], &[]);
        let src = String::from_utf8_lossy(&out.stdout).trim().to_string();
        src.rsplit('/').next().unwrap().to_string()
    }

    /// Make the kernel remount the file system read-only, as on a disk error.
    fn fail_read_only(&self) {
        let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device());
        std::fs::write(&trigger, "roleplay reliability test: simulated disk error")
            .unwrap_or_else(|e| panic!("cannot write `{trigger}` to fail the file system: {e}"));
        let out = sh("findmnt", &["-n", "-o", "OPTIONS", self.at.to_str().unwrap()], &[]);
        let opts = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            opts.contains("ro,") || opts.contains("emergency_ro"),
            "the file system did not turn read-only: {opts}"
        );
    }

    /// After a failure: unmount, repair, mount again read-write.
    fn repair(&self) {
        self.unmount();
        let image = self.image.as_ref().expect("an ext4 mount");
        // 0: clean, 1: errors corrected (the error flag the trigger set).
        sh("e2fsck", &["-f", "-y", image.to_str().unwrap()], &[1]);
        self.mount_image();
    }

    fn remount(&self, opts: &str) {
        sh(
            "mount",
            &["-o", &format!("remount,{opts}"), self.at.to_str().unwrap()],
            &[],
        );
    }

    fn unmount(&self) {
        let at = self.at.to_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("umount").arg(at).output().expect("umount");
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                sh("umount", &["-l", at], &[]);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let at = self.at.to_str().unwrap();
        if !Command::new("umount")
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            let _ = Command::new("umount").args(["-l", at]).output();
        }
    }
}

/// Wait until the run's journals hold at least `n` calls (the child must still be running).
fn wait_for_calls(run: &Path, n: usize, p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let calls: u64 = journaled_calls(run).values().sum();
        if calls as usize >= n {
            return;
        }
        if let Some(s) = p.try_status() {
            panic!(
                "the run ended before {n} calls were journaled:\n{}",
                p.output(s.code()).text()
            );
        }
        assert!(Instant::now() < deadline, "fewer than {n} calls journaled after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fill the file system holding `path` with `path` until writes fail with ENOSPC; returns bytes.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [256 << 10, 4 << 10, 512, 1] {
        let buf = vec![0xAAu8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
            assert!(written < 1 << 30, "the disk does not fill up");
        }
    }
    let _ = f.sync_all();
    written
}

/// A failed run's message: `error:`, the OS reason, the journal (or a run-directory path) and a hint.
fn assert_clear_error(out: &Out, reason: &str, run: &Path) {
    out.expect_code(1);
    let err = &out.stderr;
    assert!(err.contains("error: "), "no `error:` line:\n{}", out.text());
    assert!(
        err.contains(reason),
        "the OS reason `{reason}` is not named:\n{}",
        out.text()
    );
    assert!(
        err.contains(&run.join("journal").display().to_string()),
        "the journal is not named:\n{}",
        out.text()
    );
    assert!(err.contains("\nhint: "), "no hint:\n{}", out.text());
}

/// A refused start: exit 1, `error:` naming the OS reason and a path in the run directory. (Whether
/// it also has a hint is `disk_errors_before_any_work_say_how_to_fix_them`.)
fn assert_named_error(out: &Out, reason: &str, run: &Path) {
    out.expect_code(1);
    let err = &out.stderr;
    assert!(err.contains("error: "), "no `error:` line:\n{}", out.text());
    assert!(
        err.contains(reason),
        "the OS reason `{reason}` is not named:\n{}",
        out.text()
    );
    assert!(
        err.contains(&run.display().to_string()),
        "no path of the run directory is named:\n{}",
        out.text()
    );
}

/// Byte length of every journal's valid prefix, and the prefix itself.
fn valid_prefixes(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    journals(run)
        .into_iter()
        .map(|(shard, c)| {
            let path = run.join(format!("journal/shard-{shard:05}.jrnl"));
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes[..c.valid_len as usize].to_vec())
        })
        .collect()
}

fn assert_prefixes_kept(before: &[(PathBuf, Vec<u8>)]) {
    for (path, prefix) in before {
        let now = std::fs::read(path).unwrap();
        assert!(
            now.starts_with(prefix),
            "`{}` lost records it held ({} bytes before, {} now)",
            path.display(),
            prefix.len(),
            now.len()
        );
    }
}

/// Journaled call -> times served when it was journaled.
fn ledger(server: &SimServer, run: &Path) -> std::collections::HashMap<String, u64> {
    let served = server.served();
    journaled_calls(run)
        .into_iter()
        .map(|(k, n)| {
            assert_eq!(n, 1, "call {k} journaled {n} times");
            let s = served.get(&k).copied().unwrap_or(0);
            assert!(s >= 1, "call {k} journaled but never served");
            (k, s)
        })
        .collect()
}

fn assert_not_served_again(server: &SimServer, ledger: &std::collections::HashMap<String, u64>) -> usize {
    let served = server.served();
    for (k, n) in ledger {
        assert_eq!(
            served.get(k),
            Some(n),
            "call {k}, journaled before the fault, was served again"
        );
    }
    ledger.len()
}

fn experiment(server: &SimServer) -> Exp {
    let mut exp = Exp::quickstart(Backend::http(server.base_url(), 2, 10.0));
    exp.concurrency = 4;
    exp
}

/// A run on a 4 MB tmpfs whose disk is filled once 60 calls are journaled; returns the run's
/// output (it stops with an error) and the filler's size.
fn fill_mid_run(dir: &Path, logs: &Path, server: &SimServer) -> (Mount, PathBuf, Out, u64) {
    let mnt = Mount::tmpfs(&dir.join("mnt"), "4m");
    let run = experiment(server).plan(dir, Some(&mnt.at.join("run")));
    let mut p = Proc::spawn(logs, &["run", run.to_str().unwrap(), "--no-progress"], &[]);
    wait_for_calls(&run, 60, &mut p);
    let filled = fill(&mnt.at.join("filler"));
    let out = p.wait(Duration::from_secs(120));
    (mnt, run, out, filled)
}

#[test]
fn a_full_disk_mid_run_stops_cleanly_and_the_run_resumes_once_space_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let server = SimServer::start(dir, &["--latency-ms", "10", "--latency-jitter-ms", "5"]);
    let (mnt, run, out, filled) = fill_mid_run(dir, &logs, &server);
    let run_s = run.to_str().unwrap();
    let filler = mnt.at.join("filler");
    assert_clear_error(&out, "No space left on device", &run);
    let journaled = ledger(&server, &run);
    let kept = valid_prefixes(&run);
    let done_at_failure = done_records(&run).len();
    assert!(done_at_failure < 60, "the run finished before the disk was full");

    // Again while the disk is still full: the same clear failure, and no record lost.
    let again = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(120));
    assert_named_error(&again, "No space left on device", &run);
    assert_prefixes_kept(&kept);
    assert_not_served_again(&server, &journaled);

    // Space is back: the same command finishes every unit exactly once.
    std::fs::remove_file(&filler).unwrap();
    let done = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(120));
    done.expect_code(0);
    assert_prefixes_kept(&kept);
    let records = assert_every_unit_done_once(&run);
    let checked = assert_not_served_again(&server, &journaled);
    let rows = merge_and_check(&logs, &run, &records);
    record_figures(
        "disk-full",
        serde_json::json!({
            "filler_bytes": filled,
            "dialogues_done_when_the_disk_filled": done_at_failure,
            "calls_journaled_before_the_fault": checked,
            "journaled_calls_served_again": 0,
            "units_done_once": records.len(),
            "dataset_rows": rows,
            "lost": 0,
        }),
    );
    drop(mnt);
}

#[test]
fn a_file_system_turning_read_only_mid_run_stops_cleanly_and_the_run_resumes_after_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let mnt = Mount::ext4(&dir.join("mnt"), &dir.join("disk.img"), 64);
    let server = SimServer::start(dir, &["--latency-ms", "10", "--latency-jitter-ms", "5"]);
    let run = experiment(&server).plan(dir, Some(&mnt.at.join("run")));
    let run_s = run.to_str().unwrap();
    // The plan must be on disk before the failure (a fresh plan in the page cache would be lost).
    sh("sync", &[], &[]);

    let mut p = Proc::spawn(&logs, &["run", run_s, "--no-progress"], &[]);
    wait_for_calls(&run, 60, &mut p);
    mnt.fail_read_only();
    let out = p.wait(Duration::from_secs(120));
    assert_clear_error(&out, "Read-only file system", &run);
    // The journals still read on the read-only file system.
    let seen = journaled_calls(&run).len();
    let done_at_failure = done_records(&run).len();
    assert!(done_at_failure < 60, "the run finished before the file system failed");

    // Repaired and mounted again: what was synced is there and reads.
    mnt.repair();
    let journaled = ledger(&server, &run);
    let lost_in_window = seen.saturating_sub(journaled.len());
    let kept = valid_prefixes(&run);
    let done = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(120));
    done.expect_code(0);
    assert_prefixes_kept(&kept);
    let records = assert_every_unit_done_once(&run);
    let checked = assert_not_served_again(&server, &journaled);
    let rows = merge_and_check(&logs, &run, &records);
    record_figures(
        "disk-read-only",
        serde_json::json!({
            "dialogues_done_when_the_fs_failed": done_at_failure,
            "calls_journaled_before_the_fault": checked,
            "calls_unsynced_at_the_fault_and_made_again": lost_in_window,
            "journaled_calls_served_again": 0,
            "units_done_once": records.len(),
            "dataset_rows": rows,
            "lost": 0,
        }),
    );
    drop(mnt);
}

/// A run stopped by an error still tells how many dialogues are finished: the journals' count,
/// not only that of the shards that ended without an error.
#[test]
fn a_run_stopped_by_a_full_disk_counts_the_dialogues_it_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let server = SimServer::start(dir, &["--latency-ms", "10", "--latency-jitter-ms", "5"]);
    let (mnt, run, out, _) = fill_mid_run(dir, &logs, &server);
    out.expect_code(1);
    let done = done_records(&run).len();
    assert!(done > 0, "no dialogue finished before the disk filled");
    let summary = out
        .stderr
        .lines()
        .find(|l| l.contains(" dialogues finished ("))
        .unwrap_or_else(|| panic!("no summary line:\n{}", out.text()));
    assert!(
        summary.starts_with(&format!("{done} of 60 dialogues finished ({done} in this run")),
        "the journals hold {done} finished dialogues, all from this run, but the summary says: {summary}"
    );
    drop(mnt);
}

/// An interrupted run (SIGTERM, exit 75) on a tmpfs, stopped part-way.
fn interrupted_run_on_tmpfs(dir: &Path, logs: &Path) -> (Mount, SimServer, PathBuf) {
    let mnt = Mount::tmpfs(&dir.join("mnt"), "16m");
    let server = SimServer::start(dir, &["--latency-ms", "10"]);
    let run = experiment(&server).plan(dir, Some(&mnt.at.join("run")));
    let mut p = Proc::spawn(logs, &["run", run.to_str().unwrap(), "--no-progress"], &[]);
    wait_for_calls(&run, 40, &mut p);
    p.signal("TERM");
    p.wait(Duration::from_secs(60)).expect_code(75);
    (mnt, server, run)
}

#[test]
fn a_run_directory_full_or_read_only_at_the_start_is_refused_and_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let (mnt, server, run) = interrupted_run_on_tmpfs(dir, &logs);
    let run_s = run.to_str().unwrap();
    let journaled = ledger(&server, &run);

    // Full: refused; the journals keep every record.
    let kept = valid_prefixes(&run);
    let filler = mnt.at.join("filler");
    fill(&filler);
    let full = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(60));
    assert_named_error(&full, "No space left on device", &run);
    assert_prefixes_kept(&kept);
    std::fs::remove_file(&filler).unwrap();

    // Read-only: refused, and nothing in the run directory changes.
    let before = tree(&run);
    mnt.remount("ro");
    let ro = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(60));
    assert_named_error(&ro, "Read-only file system", &run);
    assert_eq!(tree(&run), before, "a refused run changed the run directory");
    mnt.remount("rw");

    roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(120)).expect_code(0);
    assert_prefixes_kept(&kept);
    let records = assert_every_unit_done_once(&run);
    assert_not_served_again(&server, &journaled);
    merge_and_check(&logs, &run, &records);
    drop(mnt);
}

/// Starting on a disk that is already full, or read-only, fails before any dialogue runs; the
/// error must say how to fix it, as the one a worker gives when the disk fills under it does.
#[test]
fn disk_errors_before_any_work_say_how_to_fix_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let (mnt, _server, run) = interrupted_run_on_tmpfs(dir, &logs);
    let run_s = run.to_str().unwrap();

    let mut missing = Vec::new();
    let filler = mnt.at.join("filler");
    fill(&filler);
    let full = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(60));
    assert_named_error(&full, "No space left on device", &run);
    std::fs::remove_file(&filler).unwrap();
    mnt.remount("ro");
    let ro = roleplay(&logs, &["run", run_s, "--no-progress"], &[], Duration::from_secs(60));
    assert_named_error(&ro, "Read-only file system", &run);
    mnt.remount("rw");
    for (what, out) in [("full disk", &full), ("read-only file system", &ro)] {
        // Every error line must be followed by its hint.
        let errors = out.stderr.matches("error: ").count();
        let hints = out.stderr.matches("\nhint: ").count();
        if hints < errors {
            missing.push(format!("{what}: {errors} errors, {hints} hints:\n{}", out.stderr));
        }
    }
    assert!(
        missing.is_empty(),
        "disk errors without a hint:\n{}",
        missing.join("\n")
    );
    drop(mnt);
}

/// On a full disk, an append can be cut short: part of the record is written, then ENOSPC. The
/// worker goes on appending while it winds down (records of dialogues that were in flight), and
/// on a shared file system space comes back at any moment. A record appended after the failed one
/// must then be readable: the partial record must not be left in front of it. (Library level:
/// the timing inside a worker cannot be forced from outside.)
#[test]
fn an_append_cut_short_by_a_full_disk_does_not_swallow_the_next_record() {
    use roleplay::rundir::journal::{AttemptStart, Entry, Journal};
    let tmp = tempfile::tempdir().unwrap();
    let mnt = Mount::tmpfs(&tmp.path().join("mnt"), "1m");
    let path = mnt.at.join("shard-00000.jrnl");
    let (j, _) = Journal::open(&path, "0123456789abcdef", 0, true).unwrap();
    let attempt = |n: u32, host: String| {
        Entry::Attempt(AttemptStart {
            attempt: n,
            host,
            pid: 1,
            slurm_job_id: None,
            started_at: 0,
        })
    };
    j.append(&attempt(1, "before".into())).unwrap();
    let filler = mnt.at.join("filler");
    fill(&filler);
    // Bigger than what is left of the journal's last page: written in part, then ENOSPC.
    let err = j.append(&attempt(2, "x".repeat(20_000))).expect_err("the disk is full");
    assert!(err.message.contains("No space left on device"), "{}", err.message);
    std::fs::remove_file(&filler).unwrap();
    // Space is back: this append succeeds, so the caller counts the record as journaled.
    j.append(&attempt(3, "after".into())).unwrap();
    j.sync().unwrap();
    drop(j);
    let c = journal::read(&path).unwrap().unwrap();
    assert!(
        c.entries.contains(&attempt(3, "after".into())),
        "a record whose append succeeded is not in the journal (entries {}, torn tail {}, damaged lines {:?})",
        c.entries.len(),
        c.torn_tail,
        c.damaged_lines
    );
    assert!(!c.torn_tail && c.damaged_lines.is_empty());
    drop(mnt);
}
