//! The units file (`units-<hash>.tsv`): one line per unit, sorted by shard then id.
//!
//! Tab-separated with a header: `id shard persona goal pair seed`. Compact (about 45 bytes a unit)
//! and streamable, so a worker reads its shard's units without holding a million in memory.

use super::Unit;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

const HEADER: &str = "id\tshard\tpersona\tgoal\tpair\tseed";

pub fn write_units(out: &mut impl Write, units: &[Unit]) -> std::io::Result<()> {
    let mut order: Vec<&Unit> = units.iter().collect();
    order.sort_unstable_by_key(|u| (u.shard, u.id));
    writeln!(out, "{HEADER}")?;
    for u in order {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            u.id, u.shard, u.persona, u.goal, u.pair, u.seed
        )?;
    }
    Ok(())
}

/// Reads a units file unit by unit, shard by shard (the file is sorted by shard), holding at most
/// one shard's units.
pub struct UnitsReader {
    path: std::path::PathBuf,
    lines: std::io::Lines<BufReader<fs_err::File>>,
    line_no: usize,
    peeked: Option<Unit>,
}

impl UnitsReader {
    pub fn open(path: &Path) -> Result<UnitsReader> {
        let mut lines = BufReader::new(fs_err::File::open(path)?).lines();
        match lines.next() {
            Some(Ok(h)) if h == HEADER => {}
            _ => {
                return Err(Error::config(format!("`{}` is not a units file", path.display()))
                    .with_hint("the run directory is damaged; plan again with `--replan`"));
            }
        }
        Ok(UnitsReader {
            path: path.to_path_buf(),
            lines,
            line_no: 1,
            peeked: None,
        })
    }

    fn damaged(&self, what: &str) -> Error {
        Error::config(format!("`{}` line {}: {what}", self.path.display(), self.line_no)).with_hint(
            "the units file is written by `roleplay plan` and must not be edited; plan again with `--replan`",
        )
    }

    pub fn next_unit(&mut self) -> Result<Option<Unit>> {
        if let Some(u) = self.peeked.take() {
            return Ok(Some(u));
        }
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        self.line_no += 1;
        let line = line?;
        let bad = || self.damaged("not a unit record");
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            return Err(bad());
        }
        Ok(Some(Unit {
            id: f[0].parse().map_err(|_| bad())?,
            shard: f[1].parse().map_err(|_| bad())?,
            persona: f[2].parse().map_err(|_| bad())?,
            goal: f[3].parse().map_err(|_| bad())?,
            pair: f[4].parse().map_err(|_| bad())?,
            seed: f[5].parse().map_err(|_| bad())?,
        }))
    }

    /// The units of `shard`; shards must be asked for in increasing order.
    pub fn units_of(&mut self, shard: u32) -> Result<Vec<Unit>> {
        let mut out = Vec::new();
        while let Some(u) = self.next_unit()? {
            if u.shard < shard {
                return Err(self.damaged("units are not sorted by shard"));
            }
            if u.shard > shard {
                self.peeked = Some(u);
                break;
            }
            out.push(u);
        }
        Ok(out)
    }
}

pub fn read_units(path: &Path) -> Result<Vec<Unit>> {
    let mut r = UnitsReader::open(path)?;
    let mut out = Vec::new();
    while let Some(u) = r.next_unit()? {
        out.push(u);
    }
    Ok(out)
}

/// The units of one shard (reading stops after it).
pub fn read_units_of_shard(path: &Path, shard: u32) -> Result<Vec<Unit>> {
    let mut r = UnitsReader::open(path)?;
    let mut out = Vec::new();
    while let Some(u) = r.next_unit()? {
        if u.shard > shard {
            break;
        }
        if u.shard == shard {
            out.push(u);
        }
    }
    Ok(out)
}
