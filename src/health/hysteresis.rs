//! Rise/fall hysteresis: turns a stream of probe results into up/down transitions.
//!
//! A backend starts up and untested. The first failure of a backend that has never passed takes
//! it down at once (a backend that is dead at start-up must not get traffic for `fall` intervals);
//! once it has passed a check, `fall` consecutive failures take it down and `rise` consecutive
//! successes bring a down backend up again. A result that breaks a run resets the count.

/// A change of state that [`Hysteresis::observe`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Up to down. `first_check`: it had never passed, so one failure was enough.
    Down { first_check: bool },
    /// Down to up.
    Up,
}

/// One backend's hysteresis state. Pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    /// Whether any check has ever passed: until then one failure takes the backend down.
    ever_passed: bool,
    /// Length of the current run of results that point away from the current state (failures
    /// while up, successes while down).
    run: u32,
}

impl Hysteresis {
    /// `rise` and `fall` below 1 are taken as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            ever_passed: false,
            run: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive failures while up, or consecutive successes while down, so far.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// Feeds one probe result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        match (self.up, ok) {
            (true, true) => {
                self.ever_passed = true;
                self.run = 0;
                None
            }
            (true, false) => {
                self.run += 1;
                if !self.ever_passed || self.run >= self.fall {
                    let first_check = !self.ever_passed;
                    self.up = false;
                    self.run = 0;
                    Some(Transition::Down { first_check })
                } else {
                    None
                }
            }
            (false, true) => {
                self.run += 1;
                if self.run >= self.rise {
                    self.up = true;
                    self.ever_passed = true;
                    self.run = 0;
                    Some(Transition::Up)
                } else {
                    None
                }
            }
            (false, false) => {
                self.run = 0;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` ('+' pass, '-' fail) and returns the transitions as a string: 'U', 'D'
    /// (after a pass), 'F' (first check), '.' none.
    fn trace(rise: u32, fall: u32, results: &str) -> String {
        let mut h = Hysteresis::new(rise, fall);
        results
            .chars()
            .map(|c| match h.observe(c == '+') {
                None => '.',
                Some(Transition::Up) => 'U',
                Some(Transition::Down { first_check: true }) => 'F',
                Some(Transition::Down { first_check: false }) => 'D',
            })
            .collect()
    }

    #[test]
    fn starts_up() {
        assert!(Hysteresis::new(2, 3).is_up());
    }

    #[test]
    fn first_failure_before_any_pass_takes_it_down_at_once() {
        assert_eq!(trace(2, 3, "-"), "F");
        assert_eq!(trace(1, 1, "-"), "F");
    }

    #[test]
    fn after_a_pass_it_takes_fall_consecutive_failures() {
        assert_eq!(trace(2, 3, "+---"), "...D");
        assert_eq!(trace(2, 1, "+-"), ".D");
    }

    #[test]
    fn a_pass_resets_the_failure_run() {
        assert_eq!(trace(2, 3, "+--+--+---"), ".........D");
    }

    #[test]
    fn down_backend_needs_rise_consecutive_passes() {
        assert_eq!(trace(2, 3, "-++"), "F.U");
        assert_eq!(trace(3, 3, "-+++"), "F..U");
        assert_eq!(trace(1, 3, "-+"), "FU");
    }

    #[test]
    fn a_failure_resets_the_pass_run_while_down() {
        assert_eq!(trace(3, 3, "-++-++-+++"), "F........U");
    }

    #[test]
    fn a_backend_that_came_up_once_gets_the_full_fall() {
        // Down at start, up after rise, then it has passed: one failure is not enough.
        assert_eq!(trace(2, 3, "-++-"), "F.U.");
        assert_eq!(trace(2, 3, "-++---"), "F.U..D");
    }

    #[test]
    fn steady_results_cause_no_transitions() {
        assert_eq!(trace(2, 3, "++++++"), "......");
        assert_eq!(trace(2, 3, "------"), "F.....");
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        assert_eq!(trace(0, 0, "+-+-"), ".DUD");
    }

    #[test]
    fn run_counts_results_against_the_current_state() {
        let mut h = Hysteresis::new(3, 3);
        h.observe(true);
        h.observe(false);
        h.observe(false);
        assert_eq!((h.is_up(), h.run()), (true, 2));
        h.observe(false);
        assert_eq!((h.is_up(), h.run()), (false, 0));
        h.observe(true);
        assert_eq!((h.is_up(), h.run()), (false, 1));
    }

    /// Every sequence of up to 10 results, against a straightforward model of the rules.
    #[test]
    fn matches_the_model_for_every_short_sequence() {
        for rise in 1..=3u32 {
            for fall in 1..=3u32 {
                for len in 0..=10u32 {
                    for bits in 0..(1u32 << len) {
                        let mut h = Hysteresis::new(rise, fall);
                        let (mut up, mut passed, mut fails, mut passes) = (true, false, 0, 0);
                        for i in 0..len {
                            let ok = bits & (1 << i) != 0;
                            let t = h.observe(ok);
                            let expected = if up {
                                if ok {
                                    passed = true;
                                    fails = 0;
                                    None
                                } else {
                                    fails += 1;
                                    (!passed || fails >= fall).then(|| {
                                        up = false;
                                        passes = 0;
                                        Transition::Down { first_check: !passed }
                                    })
                                }
                            } else if ok {
                                passes += 1;
                                (passes >= rise).then(|| {
                                    up = true;
                                    passed = true;
                                    fails = 0;
                                    Transition::Up
                                })
                            } else {
                                passes = 0;
                                None
                            };
                            assert_eq!(t, expected, "rise {rise} fall {fall} bits {bits:b} step {i}");
                            assert_eq!(h.is_up(), up);
                        }
                    }
                }
            }
        }
    }
}
