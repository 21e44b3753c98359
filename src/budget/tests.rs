use super::*;
use crate::plan::Shard;

fn plan_of(units: &[(u32, u32)]) -> Plan {
    // (pair, units) per shard; only `shards` matters here.
    let exp = crate::experiment::load_str(
        r#"
[personas]
template = "<AGE> person"
fixed = [{ age = "young" }]
[goals]
items = ["a goal"]
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
"#,
        std::path::Path::new("/tmp/budget.toml"),
    )
    .unwrap()
    .experiment;
    let x = crate::plan::Expansion {
        units: vec![],
        shards: units
            .iter()
            .enumerate()
            .map(|(i, (pair, n))| Shard {
                index: i as u32,
                pair: *pair,
                units: *n,
            })
            .collect(),
    };
    Plan::new(exp, &x, "x.toml".into(), b"")
}

fn caps(tokens: u64, cost: f64) -> Caps {
    Caps {
        tokens: Some(tokens),
        cost: Some(cost),
        ..Caps::default()
    }
}

#[test]
fn shares_are_in_proportion_and_add_up_to_the_cap() {
    let mut plan = plan_of(&[(0, 100), (0, 100), (0, 33)]);
    plan.experiment.budget.run = caps(1000, 10.0);
    let shares: Vec<Caps> = (0..3).map(|s| shard_caps(&plan.experiment, &plan, s)).collect();
    let tokens: Vec<u64> = shares.iter().map(|c| c.tokens.unwrap()).collect();
    // 1000 * 100/233 = 429.18, 429.18, 141.63: floors 429 + 429 + 141 = 999, one left for shard 0.
    assert_eq!(tokens, vec![430, 429, 141]);
    assert_eq!(tokens.iter().sum::<u64>(), 1000);
    let cost: f64 = shares.iter().map(|c| c.cost.unwrap()).sum();
    assert!((cost - 10.0).abs() < 1e-9);
    assert_eq!(shares[0].requests, None, "no cap stays no cap");
    assert!(shard_caps(&plan.experiment, &plan, 9).is_empty(), "no such shard");
}

#[test]
fn a_pair_cap_is_split_among_its_own_shards_and_the_tighter_cap_wins() {
    let mut plan = plan_of(&[(0, 50), (0, 50), (1, 100)]);
    plan.experiment.budget.run = caps(1_000_000, 100.0);
    plan.experiment.budget.pairs = vec![(
        0,
        Caps {
            tokens: Some(300),
            ..Caps::default()
        },
    )];
    let a = shard_caps(&plan.experiment, &plan, 0);
    let b = shard_caps(&plan.experiment, &plan, 2);
    assert_eq!(
        a.tokens,
        Some(150),
        "half of the pair's 300, tighter than a quarter of the run's"
    );
    assert_eq!(b.tokens, Some(500_000), "the other pair has the run's share only");
    assert_eq!(a.cost, Some(25.0));
}

#[tokio::test]
async fn a_ledger_reserves_the_worst_case_and_settles_the_actual() {
    let caps = Caps {
        tokens: Some(120),
        requests: Some(10),
        ..Caps::default()
    };
    let spent = Usage::of(Role::Inquirer, 20, 10, 1, None);
    let l = Ledger::new(caps, spent);
    let worst = Usage::of(Role::Responder, 30, 20, 2, None);
    let r1 = l.reserve(worst).await.expect("30 spent + 50 held fits 120");
    // 30 + 50 + 50 does not fit 120 while the first is held: the second waits for it to settle.
    let l = std::sync::Arc::new(l);
    let waiting = {
        let l = l.clone();
        tokio::spawn(async move { l.reserve(worst).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    l.settle(r1, Usage::of(Role::Responder, 25, 5, 1, None));
    let r2 = waiting
        .await
        .unwrap()
        .expect("60 spent + 50 held fits 120 once the first gave back 20");
    assert_eq!(l.spent().tokens(), 60);
    assert_eq!(l.spent().requests, 2);
    // With nothing else held, a request that does not fit is refused and the ledger reached.
    l.settle(r2, Usage::of(Role::Responder, 30, 5, 1, None));
    assert_eq!(l.reserve(worst).await, None, "95 + 50 does not fit 120");
    assert_eq!(l.reached(), Some("tokens"));
    assert_eq!(
        l.reserve(Usage::of(Role::Inquirer, 1, 1, 1, None)).await,
        None,
        "reached stays reached"
    );
}

#[test]
fn cost_is_priced_per_million_and_checked() {
    let price = Price {
        input_per_million: 1.0,
        output_per_million: 4.0,
    };
    let u = Usage::of(Role::Inquirer, 500_000, 250_000, 1, Some(price));
    assert!((u.cost - 1.5).abs() < 1e-12);
    assert_eq!(u.inquirer_tokens, 750_000);
    assert_eq!(u.responder_tokens, 0);
    let caps = Caps {
        cost: Some(1.0),
        ..Caps::default()
    };
    assert_eq!(u.over(&caps), Some("cost"));
    assert_eq!(Usage::default().over(&caps), None);
}

#[tokio::test]
async fn a_cost_cap_does_not_wait_forever_on_float_dust() {
    // 0.1 + 0.2 - 0.1 - 0.2 is not 0.0 in floats: a ledger that waited for the held cost to come
    // back to exactly zero would never learn it is reached.
    let price = Some(Price {
        input_per_million: 100_000.0,
        output_per_million: 200_000.0,
    });
    let caps = Caps {
        cost: Some(1.0),
        ..Caps::default()
    };
    let l = std::sync::Arc::new(Ledger::new(caps, Usage::default()));
    let a = l.reserve(Usage::of(Role::Inquirer, 1, 0, 1, price)).await.unwrap();
    let b = l.reserve(Usage::of(Role::Inquirer, 0, 1, 1, price)).await.unwrap();
    l.settle(a, Usage::of(Role::Inquirer, 1, 0, 1, price));
    l.settle(b, Usage::of(Role::Inquirer, 0, 1, 1, price));
    let big = Usage::of(Role::Inquirer, 10, 0, 1, price);
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), l.reserve(big)).await;
    assert_eq!(got.expect("answered, not waiting forever"), None);
    assert_eq!(l.reached(), Some("cost"));
}
