//! How many more jobs the cluster takes now: slurmctld's `MaxJobCount` (every job it holds counts,
//! every array task, finished ones too until MinJobAge) against the jobs it holds, and the user's
//! association's `MaxSubmitJobs` (and `GrpSubmitJobs`) against the jobs counted there, as
//! `scontrol show assoc_mgr` tells them where accounting enforces limits. `submit` and `resume`
//! submit the arrays of a round that fit and leave the rest for a later `resume`, instead of
//! running into sbatch's refusal (which, for MaxJobCount, sbatch retries by itself for minutes).

use serde::Serialize;

/// A limit on the jobs one may submit, and how much of it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubmitLimit {
    /// `MaxSubmitJobs` or `GrpSubmitJobs`, and the association it is set on.
    pub name: String,
    pub limit: u64,
    pub used: u64,
}

/// What the cluster says about room for more jobs; unknown parts are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobRoom {
    /// MaxJobCount.
    pub max_job_count: Option<u32>,
    /// Jobs slurmctld holds now (array tasks one by one, finished ones within MinJobAge).
    pub jobs_in_controller: Option<u64>,
    /// The tightest submit limit of the user's association, if any is set.
    pub submit_limit: Option<SubmitLimit>,
}

impl JobRoom {
    /// Tasks that may still be submitted, and the limit that says so; `None` when nothing limits.
    /// slurmctld refuses a submission once its jobs plus the new ones would reach MaxJobCount.
    pub fn tasks(&self) -> Option<(u64, String)> {
        let by_count = match (self.max_job_count, self.jobs_in_controller) {
            (Some(max), Some(held)) => Some((
                u64::from(max).saturating_sub(1).saturating_sub(held),
                format!("MaxJobCount ({max}; the controller holds {held} jobs)"),
            )),
            _ => None,
        };
        let by_assoc = self.submit_limit.as_ref().map(|l| {
            (
                l.limit.saturating_sub(l.used),
                format!("{} ({}; {} used)", l.name, l.limit, l.used),
            )
        });
        [by_count, by_assoc].into_iter().flatten().min_by_key(|(n, _)| *n)
    }
}

/// The tightest submit limit for `user` in `scontrol show assoc_mgr users=USER flags=assoc`
/// output: the user's associations (in `account`, else the default one) and their accounts'
/// `GrpSubmitJobs`. Unlimited values (`N`, empty) are skipped; text this cannot read gives `None`.
pub fn parse_assoc_submit_limit(text: &str, user: &str, account: Option<&str>) -> Option<SubmitLimit> {
    // Records start at `ClusterName=`; fields are `Key=Value` words.
    let mut records: Vec<Vec<(&str, &str)>> = Vec::new();
    for word in text.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else { continue };
        if k == "ClusterName" {
            records.push(Vec::new());
        }
        if let Some(r) = records.last_mut() {
            r.push((k, v));
        }
    }
    fn get<'t>(r: &[(&str, &'t str)], key: &str) -> Option<&'t str> {
        r.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn user_of<'t>(r: &[(&str, &'t str)]) -> Option<&'t str> {
        get(r, "UserName").map(|u| u.split('(').next().unwrap_or(""))
    }
    let mine: Vec<&Vec<(&str, &str)>> = records
        .iter()
        .filter(|r| user_of(r) == Some(user))
        .filter(|r| match account {
            Some(a) => get(r, "Account") == Some(a),
            None => get(r, "DefAssoc") == Some("Yes"),
        })
        .collect();
    let accounts: Vec<&str> = mine.iter().filter_map(|r| get(r, "Account")).collect();
    let theirs = records
        .iter()
        .filter(|r| user_of(r).is_none_or(str::is_empty))
        .filter(|r| get(r, "Account").is_some_and(|a| accounts.contains(&a)));
    let limit = |r: &[(&str, &str)], key: &str| -> Option<SubmitLimit> {
        let v = get(r, key)?;
        let (limit, used) = v.strip_suffix(')')?.split_once('(')?;
        Some(SubmitLimit {
            name: format!("{key} of account {}", get(r, "Account").unwrap_or("?")),
            limit: limit.parse().ok()?,
            used: used.parse().ok()?,
        })
    };
    let mut found: Vec<SubmitLimit> = Vec::new();
    for r in &mine {
        found.extend(limit(r, "MaxSubmitJobs").map(|mut l| {
            l.name = format!(
                "MaxSubmitJobs of {user} in account {}",
                get(r, "Account").unwrap_or("?")
            );
            l
        }));
        found.extend(limit(r, "GrpSubmitJobs"));
    }
    for r in theirs {
        found.extend(limit(r, "GrpSubmitJobs"));
    }
    found.into_iter().min_by_key(|l| l.limit.saturating_sub(l.used))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scontrol show assoc_mgr users=me flags=assoc`, shortened, as Slurm 22.05 prints it: the
    /// account `lab` with a GrpSubmitJobs, `me` in it (default) with a MaxSubmitJobs, and in
    /// `other` without one.
    const ASSOC: &str = "Current Association Manager state

Association Records

ClusterName=c Account=lab UserName= Partition= Priority=0 ID=2
    GrpJobs=N(0) GrpJobsAccrue=N(0)
    GrpSubmitJobs=5000(4100) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ=
ClusterName=c Account=lab UserName=me(1000) Partition= Priority=0 ID=3
    ParentAccount= Lft=2 DefAssoc=Yes
    GrpJobs=N(0) GrpJobsAccrue=N(0)
    GrpSubmitJobs=N(4000) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=3000(2990) MaxWallPJ=
ClusterName=c Account=other UserName=me(1000) Partition= Priority=0 ID=4
    ParentAccount= Lft=4 DefAssoc=No
    GrpSubmitJobs=N(0) GrpWall=N(0.00)
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ=
";

    #[test]
    fn the_tightest_submit_limit_of_the_users_association_is_found() {
        let l = parse_assoc_submit_limit(ASSOC, "me", None).unwrap();
        assert_eq!((l.limit, l.used), (3000, 2990));
        assert!(l.name.contains("MaxSubmitJobs of me in account lab"), "{}", l.name);
        assert_eq!(parse_assoc_submit_limit(ASSOC, "me", Some("other")), None);
        assert_eq!(parse_assoc_submit_limit(ASSOC, "you", None), None);
        assert_eq!(parse_assoc_submit_limit("garbage", "me", None), None);
        let room = JobRoom {
            max_job_count: Some(10_000),
            jobs_in_controller: Some(9_000),
            submit_limit: Some(l),
        };
        let (n, why) = room.tasks().unwrap();
        assert_eq!(n, 10);
        assert!(why.starts_with("MaxSubmitJobs"), "{why}");
        let count_only = JobRoom {
            submit_limit: None,
            ..room
        };
        assert_eq!(
            count_only.tasks().unwrap().0,
            999,
            "a submission may not reach MaxJobCount"
        );
        assert_eq!(JobRoom::default().tasks(), None);
    }
}
