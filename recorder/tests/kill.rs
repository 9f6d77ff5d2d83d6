//! A writer killed with SIGKILL in the middle of appending loses nothing it synced, and the
//! journal reopens and takes appends again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use recorder::journal::{Journal, JournalOptions};

/// Set in the child process: the journal directory to write to.
const CHILD_DIR: &str = "RECORDER_KILL_TEST_DIR";
/// The parent kills the child once it reports this many records synced.
const KILL_AFTER: u64 = 3_000;

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: 8 * 1024,
    }
}

fn payload(i: u64) -> Vec<u8> {
    let n = (i % 40) as usize + 8;
    i.to_le_bytes().iter().copied().cycle().take(n).collect()
}

/// The child: appends records 1, 2, … for ever, syncing every 7 and reporting each sync on
/// stdout. Does nothing unless run by `killed_writer_loses_no_synced_record`.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut journal = Journal::open(Path::new(&dir), options()).unwrap();
    // Bounded in case the parent is gone.
    for i in 1..=10 * KILL_AFTER {
        journal.append((i % 3) as u8, &payload(i)).unwrap();
        if i % 7 == 0 {
            journal.sync().unwrap();
            println!("synced {i}");
        }
    }
}

#[test]
fn killed_writer_loses_no_synced_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut synced = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("synced ") {
            synced = n.parse().unwrap();
            if synced >= KILL_AFTER {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        synced >= KILL_AFTER,
        "the child stopped after {synced} records"
    );

    let mut journal = Journal::open(tmp.path(), options()).unwrap();
    assert!(journal.segments().len() > 5);
    let mut count = 0;
    for (record, i) in journal.records().unwrap().zip(1..) {
        let record = record.unwrap();
        assert_eq!((record.kind, record.payload), ((i % 3) as u8, payload(i)));
        count = i;
    }
    assert!(
        count >= synced,
        "{count} records survived, {synced} were synced"
    );

    let segment = journal.append(9, b"after the crash").unwrap();
    journal.sync().unwrap();
    drop(journal);
    let journal = Journal::open(tmp.path(), options()).unwrap();
    let last = journal.records().unwrap().last().unwrap().unwrap();
    assert_eq!(
        (last.kind, last.payload.as_slice(), last.segment),
        (9, &b"after the crash"[..], segment)
    );
    assert_eq!(journal.records().unwrap().count() as u64, count + 1);
}
