//! A judge stage's units file (`units-<digest>.tsv`): one line per unit, sorted by shard then id.
//!
//! Tab-separated with a header: `id shard parent`; the unit's judge is its shard's pair. What a
//! unit judges is in the stage's inputs (`inputs-<digest>/shard-NNNNN.jsonl`), one file a shard.

use crate::error::{Error, Result};
use crate::plan::UnitId;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

pub const HEADER: &str = "id\tshard\tparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub id: UnitId,
    pub shard: u32,
    /// The judged dialogue's unit in the parent run.
    pub parent: UnitId,
}

pub fn write(out: &mut impl Write, units: &[Unit]) -> std::io::Result<()> {
    let mut order: Vec<&Unit> = units.iter().collect();
    order.sort_unstable_by_key(|u| (u.shard, u.id));
    writeln!(out, "{HEADER}")?;
    for u in order {
        writeln!(out, "{}\t{}\t{}", u.id, u.shard, u.parent)?;
    }
    Ok(())
}

/// Every unit, or with `shard` only that shard's (reading stops after it).
pub fn read(path: &Path, shard: Option<u32>) -> Result<Vec<Unit>> {
    let damaged = |line: usize| {
        Error::config(format!("`{}` line {line}: not a judge unit record", path.display()))
            .with_hint("the stage's units file is written by `roleplay judge` and must not be edited; judge again")
    };
    let mut lines = BufReader::new(fs_err::File::open(path)?).lines();
    match lines.next() {
        Some(Ok(h)) if h == HEADER => {}
        _ => {
            return Err(Error::config(format!("`{}` is not a judge units file", path.display()))
                .with_hint("the stage is damaged; run `roleplay judge` again"));
        }
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        let f: Vec<&str> = line.split('\t').collect();
        let [id, s, parent] = f.as_slice() else {
            return Err(damaged(i + 2));
        };
        let u = Unit {
            id: id.parse().map_err(|_| damaged(i + 2))?,
            shard: s.parse().map_err(|_| damaged(i + 2))?,
            parent: parent.parse().map_err(|_| damaged(i + 2))?,
        };
        match shard {
            Some(want) if u.shard > want => break,
            Some(want) if u.shard < want => continue,
            _ => out.push(u),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_by_shard() {
        let u = |i: u8, shard| Unit {
            id: UnitId([i; 10]),
            shard,
            parent: UnitId([i + 100; 10]),
        };
        let units = vec![u(3, 1), u(1, 0), u(2, 1), u(4, 2)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("units.tsv");
        let mut buf = Vec::new();
        write(&mut buf, &units).unwrap();
        std::fs::write(&path, &buf).unwrap();
        assert_eq!(read(&path, None).unwrap(), vec![u(1, 0), u(2, 1), u(3, 1), u(4, 2)]);
        assert_eq!(read(&path, Some(1)).unwrap(), vec![u(2, 1), u(3, 1)]);
        std::fs::write(&path, "id\tshard\tpersona\n").unwrap();
        assert!(read(&path, None).is_err());
    }
}
