//! The units file (`units-<hash>.tsv`): one line per unit, sorted by shard then id.
//!
//! Tab-separated with a header: `id shard persona goal pair seed`. Compact (about 45 bytes a unit)
//! and streamable, so a worker reads its shard's units without holding a million in memory.

use super::{Unit, UnitId};
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

fn parse_line(path: &Path, n: usize, line: &str) -> Result<Unit> {
    let bad = || {
        Error::config(format!("`{}` line {n}: not a unit record", path.display())).with_hint(
            "the units file is written by `roleplay plan` and must not be edited; plan again with `--replan`",
        )
    };
    let mut f = line.split('\t');
    let mut next = || f.next().ok_or_else(bad);
    let id: UnitId = next()?.parse().map_err(|_| bad())?;
    let shard = next()?.parse().map_err(|_| bad())?;
    let persona = next()?.parse().map_err(|_| bad())?;
    let goal = next()?.parse().map_err(|_| bad())?;
    let pair = next()?.parse().map_err(|_| bad())?;
    let seed = next()?.parse().map_err(|_| bad())?;
    Ok(Unit {
        id,
        shard,
        persona,
        goal,
        pair,
        seed,
    })
}

fn for_each_unit(path: &Path, mut f: impl FnMut(Unit) -> bool) -> Result<()> {
    let file = fs_err::File::open(path)?;
    let mut lines = BufReader::new(file).lines();
    match lines.next() {
        Some(Ok(h)) if h == HEADER => {}
        _ => {
            return Err(Error::config(format!("`{}` is not a units file", path.display()))
                .with_hint("the run directory is damaged; plan again with `--replan`"));
        }
    }
    for (i, line) in lines.enumerate() {
        let line = line?;
        if !f(parse_line(path, i + 2, &line)?) {
            break;
        }
    }
    Ok(())
}

pub fn read_units(path: &Path) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    for_each_unit(path, |u| {
        out.push(u);
        true
    })?;
    Ok(out)
}

/// The units of one shard (the file is sorted by shard, so reading stops after it).
pub fn read_units_of_shard(path: &Path, shard: u32) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    for_each_unit(path, |u| {
        if u.shard == shard {
            out.push(u);
        }
        u.shard <= shard
    })?;
    Ok(out)
}
