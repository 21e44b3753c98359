//! `roleplay validate FILE`: load and check an experiment; write nothing.

use crate::cli::ValidateArgs;
use crate::error::Result;
use crate::plan;

pub fn run(args: ValidateArgs) -> Result<i32> {
    let loaded = super::load_experiment(&args.file)?;
    let e = &loaded.experiment;
    // Expanding catches what only the grid shows (pairs whose models behave identically).
    plan::expand(e).map_err(|x| x.for_file(&args.file))?;
    crate::outln!(
        "ok: `{}`: {} personas x {} goals x {} pairs x {} seeds = {} dialogues",
        args.file.display(),
        e.personas.len(),
        e.goals.len(),
        e.pairs.len(),
        e.dialogue.seeds.len(),
        plan::grid_size(e)
    );
    if args.check_endpoints {
        return check_endpoints(e);
    }
    Ok(0)
}

/// Every HTTP model a pair uses, asked for its models; exit 1 when any cannot be used.
fn check_endpoints(e: &crate::experiment::Experiment) -> crate::Result<i32> {
    use crate::experiment::Backend;
    let models: Vec<_> = e
        .models
        .iter()
        .filter(|m| matches!(m.behaviour.backend, Backend::Openai | Backend::Azure))
        .filter(|m| e.pairs.iter().any(|p| p.inquirer == m.name || p.responder == m.name))
        .map(|m| m.with_endpoint_from_env(|k| std::env::var(k).ok()))
        .collect();
    if models.is_empty() {
        crate::outln!("no model talks to an endpoint: nothing to check");
        return Ok(0);
    }
    let rt = super::runtime()?;
    let answers = rt.block_on(async {
        let mut answers = Vec::new();
        for m in &models {
            let client = crate::llm::openai::OpenAiModel::new(m)?;
            answers.push(client.probe().await);
        }
        Ok::<_, crate::Error>(answers)
    })?;
    let mut bad = 0;
    for a in answers {
        match a {
            Ok(line) => crate::outln!("ok: {line}"),
            Err(line) => {
                bad += 1;
                eprintln!("error: {line}");
            }
        }
    }
    if bad > 0 {
        eprintln!("\nhint: start the server, or fix `base_url`, `model` or the key variable named by `api_key_env`");
        return Ok(crate::error::exit::FAILURES);
    }
    Ok(0)
}
