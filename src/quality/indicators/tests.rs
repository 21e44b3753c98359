//! Unit tests of every indicator, each both ways (a text that must trip it, one that must not).

use super::*;
use proptest::prelude::*;

const GOAL: &str =
    "You want to know how many cups of feed your 20 chickens need for the final meal.\nThen you want a budget.";

fn run(turns: &[(&str, &str)]) -> DialogueIndicators {
    dialogue(GOAL, turns.iter().copied())
}

const REPLY: &str = "Sure. You feed 60 cups a day; 15 in the morning and 25 in the afternoon leaves 20 cups for the last meal. Let me know if you want me to break it down further, or to plan the next week of feeding as well.";

#[test]
fn role_flip_fires_on_assistant_phrases_and_offers() {
    let d = run(&[
        ("How many cups do my chickens need tonight?", REPLY),
        (
            "I'd be happy to help you with that! As an AI, I can provide the numbers.",
            REPLY,
        ),
        ("Would you like me to work out the feed for next week too?", REPLY),
    ]);
    assert!(!d.turns[0].role_flip, "{:?}", d.turns[0]);
    assert!(d.turns[0].signals.is_empty());
    assert!(d.turns[1].role_flip);
    assert!(d.turns[1].signals.has(Signals::ASSISTANT_PHRASE));
    assert!(d.turns[1].signals.has(Signals::OFFER), "`I can provide` is an offer");
    assert!(d.turns[2].role_flip);
    assert_eq!(d.turns[2].signals.names().collect::<Vec<_>>(), ["offer"]);
    assert_eq!(d.role_flip_turns, 2);
    assert_eq!(d.role_flip_rate, Some(2.0 / 3.0));
}

#[test]
fn role_flip_needs_both_weak_signals() {
    let listy = "Here is what I found out:\n\n- 15 cups in the morning, which is what they get every day at six.\n- 25 cups in the afternoon, which they finish quickly because the weather is warm.\n- The rest in the evening, though I am not sure how much that should be for twenty hens.";
    // Long against a short reply, and a list: both weak signals, a flip.
    let d = run(&[("Hi, I need a hand with my chickens' feed.", "Sure."), (listy, "Okay.")]);
    assert!(d.turns[1].signals.has(Signals::MARKDOWN) && d.turns[1].signals.has(Signals::LENGTH));
    assert!(d.turns[1].role_flip);
    // The same list against a longer reply: markdown alone is no flip.
    let d = run(&[
        ("Hi, I need a hand with my chickens' feed.", REPLY),
        (listy, &REPLY.repeat(3)),
    ]);
    assert!(d.turns[1].signals.has(Signals::MARKDOWN));
    assert!(!d.turns[1].signals.has(Signals::LENGTH));
    assert!(!d.turns[1].role_flip);
    // A long plain turn alone is no flip either.
    let long = "so i have twenty chickens and i give them fifteen cups in the morning and twenty five in the afternoon and i keep wondering how much is left for the evening because they always look hungry when i come out at night with the bucket";
    let d = run(&[(long, "Twenty cups.")]);
    assert_eq!(d.turns[0].signals.names().collect::<Vec<_>>(), ["length"]);
    assert!(!d.turns[0].role_flip);
}

#[test]
fn markdown_forms() {
    for yes in [
        "# Plan\nsave money",
        "  ## Step one",
        "```python\nprint(1)\n```",
        "this is **important** to me",
        "1. first\n2. second",
        "- a\n- b",
        "• one\n• two",
    ] {
        assert!(markdown(yes), "{yes:?}");
    }
    for no in [
        "#hashtag",
        "- just one dash item",
        "I paid $5 * 3 for it",
        "2.5 cups then 3 more",
        "plain text\nwith lines",
    ] {
        assert!(!markdown(no), "{no:?}");
    }
}

#[test]
fn goal_leakage_fires_on_a_copied_goal_and_not_on_a_natural_prompt() {
    let d = run(&[(
        "You want to know how many cups of feed your 20 chickens need for the final meal.",
        REPLY,
    )]);
    let g = d.goal;
    assert_eq!(g.word_share, Some(1.0));
    assert!(g.lcs_share.unwrap() > 0.95, "{g:?}");
    assert!(g.leak);
    let d = run(&[("My hens eat a lot. How much should I put out tonight?", REPLY)]);
    assert!(!d.goal.leak, "{:?}", d.goal);
    assert!(d.goal.word_share.unwrap() < 0.3, "{:?}", d.goal);
    assert!(d.goal.lcs_share.unwrap() < 0.2, "{:?}", d.goal);
    // Only turn 1 counts, and only the goal's first line.
    let d = run(&[
        ("Quick question about my hens.", REPLY),
        (
            "You want to know how many cups of feed your 20 chickens need for the final meal.",
            REPLY,
        ),
    ]);
    assert!(!d.goal.leak);
    let d = run(&[("Then you want a budget.", REPLY)]);
    assert!(!d.goal.leak, "{:?}", d.goal);
}

#[test]
fn goal_leakage_counts_content_words_and_characters() {
    // Content words of "Plan a cheap trip to Rome": plan, cheap, trip, rome (a, to: stop words).
    let p = GoalProfile::new("Plan a cheap trip to Rome");
    assert_eq!(p.content_words(), 4);
    let mut words = Vec::new();
    let prompt = "What's a CHEAP way to see rome?";
    text::word_hashes(prompt, &mut words);
    let g = p.leakage(&words, prompt);
    assert_eq!(g.word_share, Some(0.5));
    // Longest common substring, case-folded: " a cheap " (9 characters) of 25.
    assert_eq!(g.lcs_chars, Some(9));
    assert_eq!(g.lcs_share, Some(9.0 / 25.0));
    assert!(!g.leak);
    // No turn: nothing to measure.
    let d = run(&[]);
    assert_eq!(d.goal.word_share, None);
    assert_eq!(d.goal.lcs_chars, None);
    assert!(!d.goal.leak);
    assert!(d.goal.content_words > 0);
}

fn brute_lcs(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(fold).collect();
    let b: Vec<char> = b.chars().map(fold).collect();
    let mut best = 0;
    let mut prev = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        let mut cur = vec![0usize; b.len() + 1];
        for j in 1..=b.len() {
            if a[i - 1] == b[j - 1] {
                cur[j] = prev[j - 1] + 1;
                best = best.max(cur[j]);
            }
        }
        prev = cur;
    }
    best
}

proptest! {
    #[test]
    fn the_suffix_automaton_finds_the_longest_common_substring(
        a in "[abcAB é]{0,30}", b in "[abcAB éz]{0,40}"
    ) {
        prop_assert_eq!(Lcs::new(&a).longest_common(&b), brute_lcs(&a, &b));
    }
}

proptest! {
    #[test]
    fn the_ascii_scan_and_the_char_scan_agree(t in "[a-zA-Z0-9' .,!?\"()\n\t-]{0,80}") {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let fast = scan_ascii(t.as_bytes(), &mut a, &LISTS);
        let slow = scan_chars(&t, &mut b, &LISTS);
        prop_assert_eq!(fast, slow);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn stopping_from_the_end_reason() {
    let s = stopping(EndReason::Stop, 3, 8);
    assert_eq!(
        s,
        Stopping {
            stop_token_used: true,
            stop_turn: Some(3),
            stop_at_first_turn: false,
            max_turns_without_stop: false
        }
    );
    assert!(stopping(EndReason::Stop, 0, 8).stop_at_first_turn);
    let m = stopping(EndReason::MaxTurns, 8, 8);
    assert!(m.max_turns_without_stop && !m.stop_token_used && m.stop_turn.is_none());
    assert!(!stopping(EndReason::NoPrompt, 2, 8).max_turns_without_stop);
    assert!(!stopping(EndReason::Stop, 8, 8).max_turns_without_stop);
}

#[test]
fn loops_fire_on_near_duplicates_only() {
    let d = run(&[
        (
            "How many cups of feed do my twenty chickens need for the evening meal?",
            REPLY,
        ),
        ("And what would a month of feed cost me at the farm store?", REPLY),
        (
            "How many cups of feed do my twenty chickens need for the evening meal??",
            REPLY,
        ),
    ]);
    assert_eq!(d.turns[0].repeat_jaccard, None);
    assert!(!d.turns[1].near_duplicate, "{:?}", d.turns[1]);
    assert!(d.turns[1].repeat_jaccard.unwrap() < 0.5);
    assert!(d.turns[2].near_duplicate, "{:?}", d.turns[2]);
    assert!(d.turns[2].repeat_jaccard.unwrap() >= LOOP_JACCARD);
    assert_eq!(d.loop_turns, 1);
    // A repeat of turn 1 is also a restart.
    assert!(d.turns[2].restart);
    assert_eq!(d.restart_turns, 1);
}

#[test]
fn restarts_fire_on_greetings_and_restated_openings() {
    let d = run(&[
        ("How many cups do my chickens need tonight?", REPLY),
        ("Hello! I have a question about feeding my chickens.", REPLY),
        ("Good morning, can you help me with something?", REPLY),
        ("Thanks, and how much does a sack cost?", REPLY),
        (
            "So again, how many cups do my chickens need tonight? I lost count.",
            REPLY,
        ),
    ]);
    let restarts: Vec<bool> = d.turns.iter().map(|t| t.restart).collect();
    assert_eq!(restarts, [false, true, true, false, true]);
    assert_eq!(d.loop_turns, 0, "{:?}", d.turns);
    // A greeting at turn 1 is no restart.
    assert!(!run(&[("Hi! How many cups?", REPLY)]).turns[0].restart);
}

fn exact_jaccard(a: &str, b: &str) -> f64 {
    let grams = |s: &str| -> std::collections::HashSet<String> {
        let norm: Vec<char> = s
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .map(fold)
            .collect();
        if norm.len() < 3 {
            return [norm.iter().collect::<String>()]
                .into_iter()
                .filter(|g| !g.is_empty())
                .collect();
        }
        norm.windows(3).map(|w| w.iter().collect()).collect()
    };
    let (x, y) = (grams(a), grams(b));
    if x.is_empty() && y.is_empty() {
        return 1.0;
    }
    x.intersection(&y).count() as f64 / x.union(&y).count() as f64
}

#[test]
fn the_sketch_estimates_the_jaccard_similarity() {
    // Short texts: few n-grams, almost never two in one bin: (nearly) exact.
    for (a, b) in [
        ("abcd", "abce"),
        ("hello   there", "HELLO there"),
        ("ab", "ab"),
        ("", ""),
        ("ab", "cd"),
    ] {
        let est = Sketch::of(a).jaccard(&Sketch::of(b));
        assert!((est - exact_jaccard(a, b)).abs() < 1e-9, "{a:?} {b:?}: {est}");
    }
    // Long texts: within a few standard errors.
    let a = REPLY;
    let b = REPLY.replace("morning", "evening").replace("next week", "coming month");
    let (est, exact) = (Sketch::of(a).jaccard(&Sketch::of(&b)), exact_jaccard(a, &b));
    assert!((est - exact).abs() < 0.15, "estimate {est}, exact {exact}");
    assert!(Sketch::of(a).jaccard(&Sketch::of("something else entirely, about cars and roads")) < 0.2);
}

#[test]
fn style_signature_counts() {
    let d = run(&[("Hey, what's up? I'm gonna ask u something now. OK?", REPLY)]);
    let s = d.turns[0].style;
    assert_eq!(s.words, 10);
    assert_eq!(s.question_ratio, 2.0 / 3.0);
    assert_eq!(s.contraction_rate, 0.2);
    // Informal: hey, gonna, u, ok = 4 of 10 words: 0.5 - 5 * 0.4 -> 0.
    assert_eq!(s.formality, 0.0);
    let d = run(&[("I would kindly request your assistance. Please advise", REPLY)]);
    let s = d.turns[0].style;
    assert_eq!((s.words, s.question_ratio, s.contraction_rate), (8, 0.0, 0.0));
    assert_eq!(s.formality, 1.0);
    // Decimals and quotes do not end sentences; "?!" is one question.
    let d = run(&[("It costs 3.5 dollars, he said \"why?\" and left. Really?!", REPLY)]);
    assert_eq!(d.turns[0].style.question_ratio, 2.0 / 3.0);
    let n = Style {
        words: 256,
        question_ratio: 0.5,
        contraction_rate: 0.05,
        formality: 0.7,
    }
    .normalised();
    assert_eq!(n, [1.0, 0.5, 0.5, 0.7]);
}

#[test]
fn style_shift_fires_when_the_persona_changes_register() {
    let casual = [
        ("hey can u help me w my hens? they're hungry lol", REPLY),
        ("ok cool, so how much is left? idk the math", REPLY),
        ("yeah thx, what's a sack cost? gonna buy one", REPLY),
        ("haha ok, and is that enough for a week?", REPLY),
    ];
    let d = run(&casual);
    assert!(!d.style_shifted, "{:?}", d.style_shift);
    assert!(d.style_shift.unwrap() < 0.15, "{:?}", d.style_shift);
    let shifting = [
        casual[0],
        casual[1],
        (
            "I would kindly request a comprehensive breakdown of the daily feed requirements for the flock, with the quantities per meal and the assumptions made. Furthermore, please include the cost of the feed over one month.",
            REPLY,
        ),
        (
            "Additionally, I would appreciate your assistance regarding the storage of the feed. Please provide detailed recommendations concerning humidity and temperature.",
            REPLY,
        ),
    ];
    let d = run(&shifting);
    assert!(d.style_shifted, "{:?}", d.style_shift);
    assert!(d.style_drift.unwrap() > 0.1);
    // One turn: no drift to speak of.
    let d = run(&casual[..1]);
    assert_eq!((d.style_drift, d.style_shift, d.style_shifted), (None, None, false));
}

#[test]
fn the_stored_form_reads_back_as_computed_and_only_as_this_version() {
    let turns = [
        ("Hi! How do I keep chickens warm in winter?", REPLY),
        ("I'd be happy to help you. Would you like me to list the steps?", REPLY),
        ("Hi! How do I keep chickens warm in winter?", REPLY),
    ];
    let d = run(&turns);
    assert!(
        d.role_flip_turns > 0 && d.loop_turns > 0 && d.restart_turns > 0,
        "{d:?}"
    );
    let stored = d.to_record().unwrap();
    let json = serde_json::to_string(&stored).unwrap();
    let back: Indicators = serde_json::from_str(&json).unwrap();
    assert_eq!(DialogueIndicators::from_record(&back, turns.len()), Some(d.clone()));
    // Another version, another number of turns: computed again.
    let other = Indicators {
        version: VERSION + 1,
        ..back.clone()
    };
    assert_eq!(DialogueIndicators::from_record(&other, turns.len()), None);
    assert_eq!(DialogueIndicators::from_record(&back, turns.len() - 1), None);
    // A form that is not this one's still parses (to be ignored), and so does an empty one.
    let odd: Indicators = serde_json::from_str(r#"{"version": 99, "novel": [1, 2]}"#).unwrap();
    assert_eq!(DialogueIndicators::from_record(&odd, 0), None);
    assert_eq!(serde_json::from_str::<Indicators>("{}").unwrap().version, 0);
    // A value JSON cannot hold is not stored.
    let mut nan = d;
    nan.turns[0].style.formality = f64::NAN;
    assert_eq!(nan.to_record(), None);
}
