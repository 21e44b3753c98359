//! The planner: an [`Experiment`] expanded into content-addressed work units grouped into shards.
//!
//! Pure and synchronous. A unit's id is a hash of everything that determines its output (persona
//! text and features, goal text, both models' behaviour including templates and sampling, seed, max
//! turns, stop token) and of nothing else: labels (goal ids, model names), endpoints, keys and
//! the order of the file do not enter it. So editing one model changes exactly that model's units,
//! and moving a server to another node changes none.
//!
//! Hashing is hierarchical: each persona, goal and model is digested once and a unit hashes only
//! the digests, which keeps a million-unit plan to a few seconds.

pub mod stage;
mod units_file;

pub use units_file::{
    INDEX_RECORD_LEN, ShardSpan, UnitsReader, encode_index, parse_shard_lines, read_units, read_units_of_shard,
    write_units, write_units_indexed,
};

use crate::experiment::{Experiment, Sharding};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bumped when the unit-id scheme changes: a different scheme means different ids.
pub const UNIT_SCHEME: &str = "roleplay-unit-v1";
pub const PLAN_FORMAT: &str = "roleplay-plan";
/// The newest plan version this build writes and reads. 2: the manifest names a shard index
/// (`shard_index`, `shard_index_digest`), and a judge stage's plan (its `judge` section) exists;
/// builds that read only version 1 refuse both, rather than run a judge stage's units as
/// dialogues. Version-1 plans are still read (workers then read the whole units file).
pub const PLAN_VERSION: u32 = 2;
/// Bumped when the judge stage's plan hash or unit-id scheme changes.
pub const JUDGE_SCHEME: &str = "roleplay-judge-v1";

/// 80 bits of a blake3 hash: collisions are checked for, and would need ~10^12 units to be likely.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub [u8; 10]);

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitId({self})")
    }
}

impl std::str::FromStr for UnitId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{s}` is not a unit id (20 hex digits)"));
        }
        let mut out = [0u8; 10];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(chunk).map_err(|e| e.to_string())?, 16)
                .map_err(|e| e.to_string())?;
        }
        Ok(UnitId(out))
    }
}

impl Serialize for UnitId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnitId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One dialogue to generate. Indices point into the plan's experiment snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub id: UnitId,
    pub shard: u32,
    pub persona: u32,
    pub goal: u32,
    pub pair: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    /// Index into the experiment's pairs: a shard holds units of one (inquirer, responder) pair.
    pub pair: u32,
    pub units: u32,
}

/// The expansion of an experiment, before it is written anywhere.
#[derive(Debug, Clone)]
pub struct Expansion {
    pub units: Vec<Unit>,
    pub shards: Vec<Shard>,
}

/// Digests of the grid's components: computed once, combined per unit.
struct Digests {
    personas: Vec<[u8; 32]>,
    goals: Vec<[u8; 32]>,
    /// Per pair: (inquirer behaviour, responder behaviour).
    pairs: Vec<([u8; 32], [u8; 32])>,
}

fn digest_json<T: Serialize>(tag: &str, v: &T) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    h.update(&[0]);
    h.update(&serde_json::to_vec(v).expect("serialisable"));
    *h.finalize().as_bytes()
}

impl Digests {
    fn new(exp: &Experiment) -> Digests {
        #[derive(Serialize)]
        struct PersonaIdentity<'a> {
            text: &'a str,
            features: &'a std::collections::BTreeMap<String, String>,
            replica: u32,
        }
        let personas = exp
            .personas
            .iter()
            .map(|p| {
                digest_json(
                    "persona",
                    &PersonaIdentity {
                        text: &p.text,
                        features: &p.features,
                        replica: p.replica,
                    },
                )
            })
            .collect();
        let goals = exp.goals.iter().map(|g| digest_json("goal", &g.text)).collect();
        let model = |name: &str| {
            let m = exp.model(name).expect("pairs name known models");
            digest_json("model", &m.behaviour)
        };
        let pairs = exp
            .pairs
            .iter()
            .map(|p| (model(&p.inquirer), model(&p.responder)))
            .collect();
        Digests { personas, goals, pairs }
    }
}

/// The id of the dialogue (persona, goal, pair, seed) under `exp`'s dialogue settings.
fn unit_id(d: &Digests, exp: &Experiment, persona: usize, goal: usize, pair: usize, seed: u64) -> UnitId {
    let mut h = blake3::Hasher::new();
    h.update(UNIT_SCHEME.as_bytes());
    h.update(&d.personas[persona]);
    h.update(&d.goals[goal]);
    h.update(&d.pairs[pair].0);
    h.update(&d.pairs[pair].1);
    h.update(&seed.to_le_bytes());
    h.update(&exp.dialogue.max_turns.to_le_bytes());
    h.update(exp.dialogue.stop_token.as_bytes());
    let mut id = [0u8; 10];
    id.copy_from_slice(&h.finalize().as_bytes()[..10]);
    UnitId(id)
}

/// Number of units the experiment expands to (checked against overflow when it was loaded).
pub fn grid_size(exp: &Experiment) -> u64 {
    exp.personas.len() as u64 * exp.goals.len() as u64 * exp.pairs.len() as u64 * exp.dialogue.seeds.len() as u64
}

/// Why a grid cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error(
        "pairs ({0}, {1}) and ({2}, {3}) would generate the same dialogues: their models behave identically (same backend, model id, sampling and templates)"
    )]
    IdenticalPairs(String, String, String, String),
    #[error("two units share the id {0} (a hash collision, or two identical units)")]
    DuplicateUnit(UnitId),
}

impl ExpandError {
    /// The user's error, naming the experiment file.
    pub fn for_file(self, file: &std::path::Path) -> crate::error::Error {
        let hint = match &self {
            ExpandError::IdenticalPairs(..) => {
                "make the models differ (e.g. in sampling or templates), or list `[[pairs]]` without one of them"
            }
            ExpandError::DuplicateUnit(_) => "make the personas, goals or seeds that repeat differ",
        };
        crate::error::Error::config(format!("`{}`: `pairs`: {self}", file.display())).with_hint(hint)
    }
}

/// Expand the grid into units and shards. Deterministic: within a pair, units are ordered by id
/// and cut into shards of equal size (the last may be smaller); shards are numbered pair by pair.
pub fn expand(exp: &Experiment) -> Result<Expansion, ExpandError> {
    let digests = Digests::new(exp);
    for (i, a) in digests.pairs.iter().enumerate() {
        if let Some(j) = digests.pairs[..i].iter().position(|b| b == a) {
            let (p, q) = (&exp.pairs[j], &exp.pairs[i]);
            return Err(ExpandError::IdenticalPairs(
                p.inquirer.clone(),
                p.responder.clone(),
                q.inquirer.clone(),
                q.responder.clone(),
            ));
        }
    }
    let total = grid_size(exp);
    let per_shard: u64 = match exp.sharding {
        Sharding::UnitsPerShard(n) => n as u64,
        Sharding::Shards(n) => total.div_ceil(n as u64).max(1),
    };
    let per_pair = exp.personas.len() * exp.goals.len() * exp.dialogue.seeds.len();
    let mut units = Vec::with_capacity(total as usize);
    let mut shards = Vec::new();
    for pair in 0..exp.pairs.len() {
        let start = units.len();
        for persona in 0..exp.personas.len() {
            for goal in 0..exp.goals.len() {
                for &seed in &exp.dialogue.seeds {
                    units.push(Unit {
                        id: unit_id(&digests, exp, persona, goal, pair, seed),
                        shard: 0,
                        persona: persona as u32,
                        goal: goal as u32,
                        pair: pair as u32,
                        seed,
                    });
                }
            }
        }
        let slice = &mut units[start..start + per_pair];
        slice.sort_unstable_by_key(|u| u.id);
        for chunk in slice.chunks_mut(per_shard as usize) {
            let index = shards.len() as u32;
            for u in chunk.iter_mut() {
                u.shard = index;
            }
            shards.push(Shard {
                index,
                pair: pair as u32,
                units: chunk.len() as u32,
            });
        }
    }
    let mut ids: Vec<UnitId> = units.iter().map(|u| u.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(ExpandError::DuplicateUnit(w[0]));
    }
    Ok(Expansion { units, shards })
}

/// The plan manifest (`plan.json`): the resolved experiment, the shards, and where the units are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub version: u32,
    pub tool_version: String,
    /// Hash of the unit scheme and the resolved experiment: equal hashes, equal plans.
    pub plan_hash: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The experiment file it was planned from (informational).
    pub source: String,
    /// Name of the units file beside this manifest.
    pub units_file: String,
    pub total_units: u64,
    /// blake3 of the units file's bytes.
    pub units_digest: String,
    /// Name of the shard index beside this manifest (version 2 on): each shard's byte range in the
    /// units file and its digest, so that a worker reads only its shard's units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_index: Option<String>,
    /// blake3 of the shard index's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_index_digest: Option<String>,
    /// Hash over plan_hash, units_file, units_digest, total_units, shards and (version 2 on) the
    /// shard index's name and digest: a hand edit of any of them is detected.
    pub manifest_hash: String,
    pub shards: Vec<Shard>,
    /// For a judge stage: its judge models, pairs (each judge against itself), sharding, worker
    /// and Slurm settings, and the judged run's dialogue settings; no personas or goals.
    pub experiment: Experiment,
    /// Present exactly in a judge stage's plan (version 2): what makes its units verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::plan::stage::Stage>,
}

/// A judge stage's plan hash: its settings and its units (whose ids cover what they judge).
pub fn judge_plan_hash(exp: &Experiment, stage: &crate::plan::stage::Stage, units_digest: &str) -> String {
    let d = digest_json(JUDGE_SCHEME, &(exp, stage, units_digest));
    blake3::Hash::from(d).to_hex()[..32].to_string()
}

/// The digest of a value's JSON under a tag (what unit ids and plan hashes are made of).
pub fn digest_of<T: Serialize>(tag: &str, v: &T) -> [u8; 32] {
    digest_json(tag, v)
}

/// The hash that decides whether a plan is unchanged.
pub fn plan_hash(exp: &Experiment) -> String {
    let d = digest_json(UNIT_SCHEME, exp);
    blake3::Hash::from(d).to_hex()[..32].to_string()
}

impl Plan {
    /// A plan for `exp`; `units_tsv` is the units file's content (see [`write_units`]); its shard
    /// index is derived from it.
    pub fn new(exp: Experiment, expansion: &Expansion, source: String, units_tsv: &[u8]) -> Plan {
        let index = encode_index(&units_file::spans_of(units_tsv));
        Plan::with_index(exp, expansion, source, units_tsv, &index)
    }

    /// Like [`Plan::new`], with the shard index's content given (see [`write_units_indexed`] and
    /// [`encode_index`]).
    pub fn with_index(exp: Experiment, expansion: &Expansion, source: String, units_tsv: &[u8], index: &[u8]) -> Plan {
        let plan_hash = plan_hash(&exp);
        let shard_index = format!("shards-{}.idx", &plan_hash[..16]);
        let mut plan = Plan {
            format: PLAN_FORMAT.into(),
            version: PLAN_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            units_file: format!("units-{}.tsv", &plan_hash[..16]),
            plan_hash,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            source,
            total_units: expansion.units.len() as u64,
            units_digest: blake3::hash(units_tsv).to_hex().to_string(),
            shard_index: Some(shard_index),
            shard_index_digest: Some(blake3::hash(index).to_hex().to_string()),
            manifest_hash: String::new(),
            shards: expansion.shards.clone(),
            experiment: exp,
            judge: None,
        };
        plan.manifest_hash = plan.compute_manifest_hash();
        plan
    }

    /// A judge stage's plan: `units_tsv` is its units file (`rundir::judge_units`), `total_units` its lines.
    pub fn judge(
        exp: Experiment,
        stage: crate::plan::stage::Stage,
        shards: Vec<Shard>,
        total_units: u64,
        source: String,
        units_tsv: &[u8],
    ) -> Plan {
        let units_digest = blake3::hash(units_tsv).to_hex().to_string();
        let plan_hash = judge_plan_hash(&exp, &stage, &units_digest);
        let mut plan = Plan {
            format: PLAN_FORMAT.into(),
            version: PLAN_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            units_file: format!("units-{}.tsv", &units_digest[..16]),
            plan_hash,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            source,
            total_units,
            units_digest,
            // A judge stage's worker reads its units and inputs by itself (`rundir::judge_units`).
            shard_index: None,
            shard_index_digest: None,
            manifest_hash: String::new(),
            shards,
            experiment: exp,
            judge: Some(stage),
        };
        plan.manifest_hash = plan.compute_manifest_hash();
        plan
    }

    /// The plan hash its content gives: a hand edit of the experiment (or the judge section) shows.
    pub fn content_hash(&self) -> String {
        match &self.judge {
            None => plan_hash(&self.experiment),
            Some(stage) => judge_plan_hash(&self.experiment, stage, &self.units_digest),
        }
    }

    pub fn compute_manifest_hash(&self) -> String {
        let v = (
            &self.plan_hash,
            &self.units_file,
            &self.units_digest,
            self.total_units,
            &self.shards,
        );
        let d = match (&self.shard_index, &self.shard_index_digest) {
            // Version 1: the hash it was written with.
            (None, None) => digest_json("manifest", &v),
            (index, digest) => digest_json("manifest", &(v, index, digest)),
        };
        blake3::Hash::from(d).to_hex()[..32].to_string()
    }
}

#[cfg(test)]
mod tests;
