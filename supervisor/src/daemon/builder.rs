//! An app's rebuild cycle (`watch` with `build`) as a pure machine: a change starts a build, a
//! change during a build asks for another, a success reloads, a failure keeps the running version.
//! `build` runs the commands and the reloads it decides.

/// Where an app's rebuild cycle is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Builder {
    /// No build running. `failed` holds why the last one failed (shown in `list`), until one
    /// succeeds.
    #[default]
    Idle,
    Failed(String),
    /// A build is running; `again` when files changed since it started.
    Building {
        again: bool,
    },
}

/// What changed for the builder.
#[derive(Debug)]
pub(super) enum Event {
    Changed,
    /// The build ended: `Ok`, or why it failed.
    Finished(Result<(), String>),
}

/// What the daemon does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    Nothing,
    /// Run the build command.
    Build,
    /// The build succeeded: replace every instance with the new program.
    Reload,
}

impl Builder {
    pub(super) fn step(&mut self, event: Event) -> Action {
        let (next, action) = match (std::mem::take(self), event) {
            (Builder::Idle | Builder::Failed(_), Event::Changed) => (Builder::Building { again: false }, Action::Build),
            (Builder::Building { .. }, Event::Changed) => (Builder::Building { again: true }, Action::Nothing),
            // Built from files that have changed since: build again before reloading anything.
            (Builder::Building { again: true }, Event::Finished(_)) => {
                (Builder::Building { again: false }, Action::Build)
            }
            (Builder::Building { again: false }, Event::Finished(Ok(()))) => (Builder::Idle, Action::Reload),
            (Builder::Building { again: false }, Event::Finished(Err(why))) => (Builder::Failed(why), Action::Nothing),
            // A build result without a build (it cannot happen): nothing to act on.
            (state @ (Builder::Idle | Builder::Failed(_)), Event::Finished(_)) => (state, Action::Nothing),
        };
        *self = next;
        action
    }

    /// For `list` and `monit`: a build under way, or the last one's failure.
    pub(super) fn note(&self) -> Option<String> {
        match self {
            Builder::Idle => None,
            Builder::Building { .. } => Some("building after a change".into()),
            Builder::Failed(why) => Some(format!("build failed ({why}): the previous version keeps serving")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_builds_a_success_reloads_a_failure_keeps_serving_a_change_during_a_build_builds_again() {
        let failed = || Event::Finished(Err("exit 1".into()));
        let rows: Vec<(Event, Action, Builder)> = vec![
            (Event::Changed, Action::Build, Builder::Building { again: false }),
            (Event::Finished(Ok(())), Action::Reload, Builder::Idle),
            (Event::Changed, Action::Build, Builder::Building { again: false }),
            (failed(), Action::Nothing, Builder::Failed("exit 1".into())),
            (Event::Changed, Action::Build, Builder::Building { again: false }),
            (Event::Changed, Action::Nothing, Builder::Building { again: true }),
            (Event::Changed, Action::Nothing, Builder::Building { again: true }),
            // Whatever the stale build gave, the newest files are built before anything reloads.
            (Event::Finished(Ok(())), Action::Build, Builder::Building { again: false }),
            (Event::Finished(Ok(())), Action::Reload, Builder::Idle),
            (Event::Finished(Ok(())), Action::Nothing, Builder::Idle),
        ];
        let mut builder = Builder::default();
        for (i, (event, action, state)) in rows.into_iter().enumerate() {
            let got = builder.step(event);
            assert_eq!((got, &builder), (action, &state), "row {i}");
        }
        assert_eq!(
            Builder::Failed("exit 1".into()).note().as_deref(),
            Some("build failed (exit 1): the previous version keeps serving")
        );
    }
}
