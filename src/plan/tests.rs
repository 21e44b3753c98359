//! Unit tests of the planner on small in-memory experiments.

use super::*;
use crate::experiment;
use std::path::Path;

fn load(text: &str) -> Experiment {
    experiment::load_str(text, Path::new("/tmp/exp.toml"))
        .expect("valid")
        .experiment
}

const BASE: &str = r#"
[dialogue]
seeds = [1, 2]
[personas]
template = "<AGE> person"
fixed = [{ age = "young" }, { age = "old" }, { age = "old" }]
[goals]
items = ["first goal", { id = "g2", text = "second goal\nand a later line" }]
[[models]]
name = "inq"
roles = ["inquirer"]
backend = "sim"
[models.templates]
first_turn = "You are <PERSONA>. Goal: <OBJECTIVE>. Say <CONV_STOP> when done."
response_forwarding = "\"<RESPONSE>\""
[[models]]
name = "resp"
roles = ["responder"]
backend = "sim"
[[models]]
name = "resp2"
roles = ["responder"]
backend = "sim"
[models.sampling]
temperature = 0.5
[sharding]
units_per_shard = 5
"#;

#[test]
fn grid_is_the_product_and_shards_hold_one_pair() {
    let exp = load(BASE);
    let x = expand(&exp).unwrap();
    assert_eq!(x.units.len(), 3 * 2 * 2 * 2);
    // 12 units per pair, 5 per shard: 3 shards per pair.
    assert_eq!(x.shards.len(), 6);
    for s in &x.shards {
        let members: Vec<_> = x.units.iter().filter(|u| u.shard == s.index).collect();
        assert_eq!(members.len() as u32, s.units);
        assert!(members.iter().all(|u| u.pair == s.pair));
    }
}

#[test]
fn identical_personas_are_distinct_replicas() {
    let exp = load(BASE);
    let ids: Vec<_> = exp.personas.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(exp.personas.iter().filter(|p| p.replica == 1).count(), 1);
}

#[test]
fn reordering_the_file_changes_no_id_and_no_plan_hash() {
    let a = load(BASE);
    let reordered = BASE
        .replace(
            r#"fixed = [{ age = "young" }, { age = "old" }, { age = "old" }]"#,
            r#"fixed = [{ age = "old" }, { age = "young" }, { age = "old" }]"#,
        )
        .replace("seeds = [1, 2]", "seeds = [2, 1]");
    let b = load(&reordered);
    let ids = |e: &Experiment| {
        let mut v: Vec<_> = expand(e).unwrap().units.iter().map(|u| u.id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(plan_hash(&a), plan_hash(&b));
}

#[test]
fn editing_one_model_changes_only_its_units() {
    let a = load(BASE);
    let b = load(&BASE.replace(
        "name = \"resp2\"\nroles = [\"responder\"]\nbackend = \"sim\"",
        "name = \"resp2\"\nroles = [\"responder\"]\nbackend = \"sim\"\n[models.degeneration]\nmax_n = 6",
    ));
    let xa = expand(&a).unwrap();
    let xb = expand(&b).unwrap();
    let pair_of = |e: &Experiment, name: &str| e.pairs.iter().position(|p| p.responder == name).unwrap() as u32;
    let ids = |x: &Expansion, pair: u32| {
        let mut v: Vec<_> = x.units.iter().filter(|u| u.pair == pair).map(|u| u.id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&xa, pair_of(&a, "resp")), ids(&xb, pair_of(&b, "resp")));
    let changed_a = ids(&xa, pair_of(&a, "resp2"));
    let changed_b = ids(&xb, pair_of(&b, "resp2"));
    assert!(changed_a.iter().all(|id| !changed_b.contains(id)));
}

#[test]
fn endpoints_are_not_part_of_unit_ids() {
    let with_url = |url: &str| {
        BASE.replace(
            "name = \"resp\"\nroles = [\"responder\"]\nbackend = \"sim\"",
            &format!(
                "name = \"resp\"\nroles = [\"responder\"]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"{url}\""
            ),
        )
    };
    let a = expand(&load(&with_url("http://10.0.0.1:8000/v1"))).unwrap();
    let b = expand(&load(&with_url("http://127.0.0.1:9000/v1"))).unwrap();
    let set = |x: &Expansion| x.units.iter().map(|u| u.id).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(&a), set(&b));
}

#[test]
fn target_shard_count_is_respected_per_pair() {
    let exp = load(&BASE.replace("units_per_shard = 5", "shards = 4"));
    let x = expand(&exp).unwrap();
    // 24 units / 4 shards = 6 per shard; each pair's 12 units make 2 shards.
    assert_eq!(x.shards.len(), 4);
    assert!(x.shards.iter().all(|s| s.units == 6));
}

#[test]
fn units_file_round_trips_and_reads_one_shard() {
    let exp = load(BASE);
    let x = expand(&exp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("units.tsv");
    let mut f = std::fs::File::create(&path).unwrap();
    write_units(&mut f, &x.units).unwrap();
    let mut back = read_units(&path).unwrap();
    let mut orig = x.units.clone();
    back.sort_by_key(|u| u.id);
    orig.sort_by_key(|u| u.id);
    assert_eq!(back, orig);
    let shard2 = read_units_of_shard(&path, 2).unwrap();
    assert_eq!(shard2.len() as u32, x.shards[2].units);
    assert!(shard2.iter().all(|u| u.shard == 2));
}
