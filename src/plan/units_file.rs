//! The units file (`units-<hash>.tsv`): one line per unit, sorted by shard then id.
//!
//! Tab-separated with a header: `id shard persona goal pair seed`. Compact (about 45 bytes a unit)
//! and streamable.
//!
//! Beside it (plan version 2 on), the shard index (`shards-<hash>.idx`): per shard, the byte range
//! of its lines in the units file and a digest of those bytes, in fixed-width lines, so that a
//! worker reads one index line and its shard's lines, wherever the shard is in a million units:
//!
//! ```text
//! roleplay-shard-index 1
//! SSSSSSSSSS OOOOOOOOOOOOOOOO LLLLLLLLLLLLLLLL DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD
//! ```
//!
//! (shard in decimal, offset and length in hex, 128 bits of the blake3 of the shard's bytes in hex).

use super::Unit;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

const HEADER: &str = "id\tshard\tpersona\tgoal\tpair\tseed";

/// The shard index's first line.
pub const INDEX_HEADER: &str = "roleplay-shard-index 1\n";
/// The length of every record line of the shard index (newline included).
pub const INDEX_RECORD_LEN: u64 = 78;

/// Where one shard's lines are in the units file, and the digest of those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpan {
    pub shard: u32,
    pub offset: u64,
    pub len: u64,
    pub digest: [u8; 16],
}

impl ShardSpan {
    /// Whether `bytes` are the shard's lines as planned.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && span_digest(bytes) == self.digest
    }

    /// Where the shard's record is in the index.
    pub fn record_offset(shard: u32) -> u64 {
        INDEX_HEADER.len() as u64 + u64::from(shard) * INDEX_RECORD_LEN
    }

    fn encode(&self) -> String {
        let digest: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{:010} {:016x} {:016x} {digest}\n", self.shard, self.offset, self.len)
    }

    /// Reads one record line of the index (newline included); `None` if it is not one.
    pub fn decode(line: &[u8]) -> Option<ShardSpan> {
        let text = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
        if line.len() as u64 != INDEX_RECORD_LEN {
            return None;
        }
        let mut f = text.split(' ');
        let shard = f.next()?.parse().ok()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let len = u64::from_str_radix(f.next()?, 16).ok()?;
        let hex = f.next()?;
        if f.next().is_some() || hex.len() != 32 {
            return None;
        }
        let mut digest = [0u8; 16];
        for (i, d) in digest.iter_mut().enumerate() {
            *d = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ShardSpan {
            shard,
            offset,
            len,
            digest,
        })
    }
}

fn span_digest(bytes: &[u8]) -> [u8; 16] {
    let mut d = [0u8; 16];
    d.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    d
}

/// The shard index of these spans (see the module's documentation).
pub fn encode_index(spans: &[ShardSpan]) -> Vec<u8> {
    let mut out = String::with_capacity(INDEX_HEADER.len() + spans.len() * INDEX_RECORD_LEN as usize);
    out.push_str(INDEX_HEADER);
    for s in spans {
        out.push_str(&s.encode());
    }
    out.into_bytes()
}

/// Writes the units file into `out` (as [`write_units`]) and returns each shard's span in it, in
/// shard order.
pub fn write_units_indexed(out: &mut Vec<u8>, units: &[Unit]) -> Vec<ShardSpan> {
    let start = out.len();
    write_units(out, units).expect("writing to memory");
    spans_of(&out[start..])
}

/// Each shard's span in a units file's bytes (sorted by shard, as [`write_units`] writes it), in
/// shard order; a line that names no shard ends up in the span before it.
pub fn spans_of(units_tsv: &[u8]) -> Vec<ShardSpan> {
    let mut spans: Vec<ShardSpan> = Vec::new();
    let mut pos = units_tsv
        .iter()
        .position(|&b| b == b'\n')
        .map_or(units_tsv.len(), |i| i + 1);
    while pos < units_tsv.len() {
        let end = units_tsv[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(units_tsv.len(), |i| pos + i + 1);
        let line = &units_tsv[pos..end];
        let shard = line
            .split(|&b| b == b'\t')
            .nth(1)
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse::<u32>().ok());
        match (spans.last_mut(), shard) {
            (Some(last), s) if s.is_none_or(|s| s == last.shard) => last.len = end as u64 - last.offset,
            (_, s) => spans.push(ShardSpan {
                shard: s.unwrap_or(0),
                offset: pos as u64,
                len: (end - pos) as u64,
                digest: [0; 16],
            }),
        }
        pos = end;
    }
    for s in &mut spans {
        let from = s.offset as usize;
        s.digest = span_digest(&units_tsv[from..from + s.len as usize]);
    }
    spans
}

/// Parses one shard's lines (as the index locates them); every line must be a unit of `shard`.
pub fn parse_shard_lines(path: &Path, bytes: &[u8], shard: u32) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let unit = std::str::from_utf8(line).ok().and_then(parse_unit_line);
        match unit {
            Some(u) if u.shard == shard => out.push(u),
            _ => {
                return Err(Error::config(format!(
                    "`{}`: the lines of shard {shard} hold no units of it",
                    path.display()
                ))
                .with_hint(
                    "the units file is written by `roleplay plan` and must not be edited; plan again with `--replan`",
                ));
            }
        }
    }
    Ok(out)
}

/// One line of the units file (without its newline).
fn parse_unit_line(line: &str) -> Option<Unit> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 6 {
        return None;
    }
    Some(Unit {
        id: f[0].parse().ok()?,
        shard: f[1].parse().ok()?,
        persona: f[2].parse().ok()?,
        goal: f[3].parse().ok()?,
        pair: f[4].parse().ok()?,
        seed: f[5].parse().ok()?,
    })
}

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
        match parse_unit_line(&line) {
            Some(u) => Ok(Some(u)),
            None => Err(self.damaged("not a unit record")),
        }
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
