//! Which sync run goes next. One run at a time: a forced run asked for while one runs waits
//! behind it (the latest ask wins), a periodic check that finds one running is dropped, and
//! needs the running job cannot take start one lazy run after it. Pure: the engine loop
//! reports what happened and starts what this says.

use super::Trigger;

/// A run to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub trigger: Trigger,
    /// Whether it may use the handshake's node list instead of downloading one.
    pub use_handshake: bool,
    /// Nodes whose keys go ahead of the rest.
    pub urgent: Vec<u32>,
}

impl Start {
    fn new(trigger: Trigger, use_handshake: bool) -> Self {
        Self {
            trigger,
            use_handshake,
            urgent: Vec::new(),
        }
    }
}

/// What became of an ask for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Start(Start),
    /// It runs when the running one ends.
    Queued,
    /// The link is down: nothing can run.
    LinkDown,
}

/// Where a node's need goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeedRoute {
    /// To the running job (ahead of its fill); [`Schedule::defer`] it if the job will not take it.
    Running,
    Start(Start),
    LinkDown,
}

/// Whether a run goes, and what waits for it to end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Schedule {
    #[default]
    Idle,
    Running {
        /// A forced run asked for meanwhile, and whether it may use the handshake list.
        queued: Option<(Trigger, bool)>,
        /// Needs the running job could not take, for one lazy run after it.
        lazy: Vec<(u32, Trigger)>,
    },
}

impl Schedule {
    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }

    /// A run was asked for (startup, reconnect, the operator); `up` says whether the link is.
    pub fn ask(&mut self, trigger: Trigger, use_handshake: bool, up: bool) -> Asked {
        match self {
            Self::Running { queued, .. } => {
                *queued = Some((trigger, use_handshake));
                Asked::Queued
            }
            Self::Idle if up => Asked::Start(self.start(Start::new(trigger, use_handshake))),
            Self::Idle => Asked::LinkDown,
        }
    }

    /// The periodic check: a run starts only when none runs and the link is up.
    pub fn check(&mut self, up: bool) -> Option<Start> {
        match self {
            Self::Idle if up => Some(self.start(Start::new(Trigger::Check, false))),
            _ => None,
        }
    }

    /// `num` needs its key now, for `trigger`.
    pub fn need(&mut self, num: u32, trigger: Trigger, up: bool) -> NeedRoute {
        match self {
            Self::Running { .. } => NeedRoute::Running,
            Self::Idle if up => {
                let start = Start {
                    urgent: vec![num],
                    ..Start::new(trigger, false)
                };
                NeedRoute::Start(self.start(start))
            }
            Self::Idle => NeedRoute::LinkDown,
        }
    }

    /// The running job would not take `num`'s need: it goes in the lazy run after it.
    pub fn defer(&mut self, num: u32, trigger: Trigger) {
        if let Self::Running { lazy, .. } = self {
            lazy.push((num, trigger));
        }
    }

    /// The running run ended: what starts next — the forced run asked for meanwhile first,
    /// then the needs it could not take (which otherwise wait for the next end). When it cannot
    /// start after all (the link went down), the engine says [`Schedule::not_started`].
    pub fn finished(&mut self) -> Option<Start> {
        let Self::Running { queued, lazy } = std::mem::take(self) else {
            return None;
        };
        let next = match queued {
            Some((trigger, use_handshake)) => Start::new(trigger, use_handshake),
            None if lazy.is_empty() => return None,
            None => Start {
                urgent: lazy.iter().map(|(n, _)| *n).collect(),
                ..Start::new(lazy[0].1, false)
            },
        };
        let lazy = if queued.is_some() { lazy } else { Vec::new() };
        *self = Self::Running { queued: None, lazy };
        Some(next)
    }

    /// The run said to start did not (the link went down before it could).
    pub fn not_started(&mut self) {
        *self = Self::Idle;
    }

    /// `start` runs now.
    fn start(&mut self, start: Start) -> Start {
        *self = Self::Running {
            queued: None,
            lazy: Vec::new(),
        };
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_while_a_run_goes_is_dropped_and_one_while_idle_starts() {
        let mut s = Schedule::default();
        assert_eq!(s.check(true), Some(Start::new(Trigger::Check, false)));
        assert_eq!(s.check(true), None);
        assert_eq!(s.finished(), None, "the check was not queued");
        assert_eq!(s, Schedule::Idle);
    }

    #[test]
    fn nothing_starts_while_the_link_is_down() {
        let mut s = Schedule::default();
        assert_eq!(s.check(false), None);
        assert_eq!(s.ask(Trigger::Operator, false, false), Asked::LinkDown);
        assert_eq!(s.need(3, Trigger::Heard, false), NeedRoute::LinkDown);
        assert_eq!(s, Schedule::Idle);
    }

    #[test]
    fn a_forced_run_asked_while_one_runs_starts_when_it_ends_and_the_last_ask_wins() {
        let mut s = Schedule::default();
        assert!(matches!(
            s.ask(Trigger::Startup, true, true),
            Asked::Start(_)
        ));
        assert_eq!(s.ask(Trigger::Operator, false, true), Asked::Queued);
        assert_eq!(s.ask(Trigger::Reconnect, true, true), Asked::Queued);
        assert_eq!(s.finished(), Some(Start::new(Trigger::Reconnect, true)));
        assert!(s.is_running());
        assert_eq!(s.finished(), None);
    }

    #[test]
    fn needs_the_running_job_cannot_take_start_one_lazy_run_after_it() {
        let mut s = Schedule::default();
        assert_eq!(
            s.need(5, Trigger::Heard, true),
            NeedRoute::Start(Start {
                urgent: vec![5],
                ..Start::new(Trigger::Heard, false)
            })
        );
        assert_eq!(s.need(6, Trigger::ClientDm, true), NeedRoute::Running);
        s.defer(6, Trigger::ClientDm);
        s.defer(7, Trigger::DmFailed);
        assert_eq!(
            s.finished(),
            Some(Start {
                urgent: vec![6, 7],
                ..Start::new(Trigger::ClientDm, false)
            })
        );
        assert_eq!(s.finished(), None);
    }

    #[test]
    fn a_queued_forced_run_goes_before_the_lazy_needs_which_wait_for_its_end() {
        let mut s = Schedule::default();
        let _ = s.check(true);
        s.defer(6, Trigger::Heard);
        assert_eq!(s.ask(Trigger::Operator, false, true), Asked::Queued);
        assert_eq!(s.finished(), Some(Start::new(Trigger::Operator, false)));
        assert_eq!(
            s.finished(),
            Some(Start {
                urgent: vec![6],
                ..Start::new(Trigger::Heard, false)
            })
        );
    }

    #[test]
    fn a_run_that_could_not_start_leaves_the_schedule_idle() {
        let mut s = Schedule::default();
        let _ = s.check(true);
        let _ = s.ask(Trigger::Operator, false, true);
        assert_eq!(s.finished(), Some(Start::new(Trigger::Operator, false)));
        s.not_started();
        assert_eq!(s, Schedule::Idle);
        assert!(matches!(
            s.ask(Trigger::Operator, false, true),
            Asked::Start(_)
        ));
    }
}
