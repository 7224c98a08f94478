//! Which server of a writer pool is the writer: exactly one at a time, and sticky.
//!
//! The checkers judge each server (up, writable, in sync: [`super::state`]); this step turns
//! those verdicts into one writer. When several servers qualify — the article's master-master
//! pair, a Galera cluster — the current writer keeps the role, since moving writes between
//! masters that replicate to each other invites conflicts; it moves only when the writer stops
//! qualifying (down, read-only, out of sync), or when the operator promotes another. With
//! `failback`, a qualifying server listed before the writer takes the role back. Every change
//! carries its reason, for the log line, the counter and the notify command.
//!
//! Pure: verdicts in, a change out; no clock, no I/O.

use super::state::Reason;

/// Whether a server qualifies, and why not ([`super::state`]'s verdicts).
pub type Verdict = Result<(), Reason>;

/// What an update did to the writer role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The writer stays (or there was none and still is none).
    None,
    /// A writer where there was none.
    Elected { to: usize, reason: String },
    /// The role moved from one server to another.
    Moved { from: usize, to: usize, reason: String },
    /// The writer stopped qualifying and no other server does: no writer until one does.
    Lost { from: usize, reason: String },
}

/// The writer of one pool of `n` servers, by position in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterElection {
    writer: Option<usize>,
    /// A qualifying server listed before the writer takes the role back.
    failback: bool,
    /// The server the operator promoted last: with `failback`, the one the role returns to
    /// (instead of the first listed) whenever it qualifies, so that a promotion is not undone
    /// by the next check.
    promoted: Option<usize>,
}

impl WriterElection {
    pub fn new(failback: bool) -> WriterElection {
        WriterElection {
            writer: None,
            failback,
            promoted: None,
        }
    }

    /// An election whose writer is already `writer`, and whose last promoted server is
    /// `promoted` (both carried across a reload).
    pub fn starting_with(failback: bool, writer: Option<usize>, promoted: Option<usize>) -> WriterElection {
        WriterElection {
            writer,
            failback,
            promoted,
        }
    }

    /// The server the operator promoted last, by position.
    pub fn promoted(&self) -> Option<usize> {
        self.promoted
    }

    /// The writer now, by position.
    pub fn writer(&self) -> Option<usize> {
        self.writer
    }

    /// Takes the latest verdict of every server, in pool order.
    pub fn update(&mut self, verdicts: &[Verdict]) -> Change {
        let first = verdicts.iter().position(Result::is_ok);
        let Some(writer) = self.writer else {
            return match first {
                Some(to) => {
                    self.writer = Some(to);
                    Change::Elected {
                        to,
                        reason: "no writer, and it qualifies first in the list".into(),
                    }
                }
                None => Change::None,
            };
        };
        match verdicts.get(writer) {
            Some(Ok(())) if self.failback => {
                let promoted = self
                    .promoted
                    .filter(|&p| verdicts.get(p).is_some_and(Result::is_ok));
                let (to, reason) = match (promoted, first) {
                    (Some(p), _) => (p, "failback: the promoted server qualifies again"),
                    (None, Some(f)) if f < writer => (f, "failback: it qualifies again and is listed first"),
                    _ => return Change::None,
                };
                if to == writer {
                    return Change::None;
                }
                self.writer = Some(to);
                Change::Moved {
                    from: writer,
                    to,
                    reason: reason.into(),
                }
            }
            Some(Ok(())) => Change::None,
            lost => {
                let reason = match lost {
                    Some(Err(why)) => why.clone(),
                    _ => "no longer in the pool".into(),
                };
                self.writer = first;
                match first {
                    Some(to) => Change::Moved {
                        from: writer,
                        to,
                        reason,
                    },
                    None => Change::Lost { from: writer, reason },
                }
            }
        }
    }

    /// The operator's switchover to server `to`: refused, with the reason, unless it qualifies.
    pub fn promote(&mut self, to: usize, verdicts: &[Verdict]) -> Result<Change, String> {
        match verdicts.get(to) {
            None => Err(format!("no server at position {to} in this pool")),
            Some(Err(why)) => Err(format!("it does not qualify as the writer: {why}")),
            Some(Ok(())) if self.writer == Some(to) => {
                self.promoted = Some(to);
                Ok(Change::None)
            }
            Some(Ok(())) => {
                self.promoted = Some(to);
                let reason = "promoted by the operator".to_string();
                let change = match self.writer.replace(to) {
                    Some(from) => Change::Moved { from, to, reason },
                    None => Change::Elected { to, reason },
                };
                Ok(change)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Verdict = Ok(());

    fn no(why: &str) -> Verdict {
        Err(why.to_string())
    }

    fn moved(from: usize, to: usize) -> impl Fn(&Change) -> bool {
        move |c| matches!(c, Change::Moved { from: f, to: t, .. } if (*f, *t) == (from, to))
    }

    #[test]
    fn the_first_qualifying_server_is_elected_and_then_kept() {
        let mut election = WriterElection::new(false);
        assert_eq!(
            election.update(&[no("down"), no("read_only is ON")]),
            Change::None
        );
        assert!(matches!(
            election.update(&[no("down"), OK]),
            Change::Elected { to: 1, .. }
        ));
        // The first server comes back: the writer stays where it is.
        assert_eq!(election.update(&[OK, OK]), Change::None);
        assert_eq!(election.writer(), Some(1));
    }

    #[test]
    fn the_role_moves_only_when_the_writer_stops_qualifying_with_its_reason() {
        let mut election = WriterElection::new(false);
        election.update(&[OK, OK]);
        assert_eq!(election.writer(), Some(0));
        let change = election.update(&[no("read_only is ON"), OK]);
        assert_eq!(
            change,
            Change::Moved {
                from: 0,
                to: 1,
                reason: "read_only is ON".into()
            }
        );
        // Nobody qualifies: the writer is lost, and the next qualifying server is elected.
        let change = election.update(&[no("down"), no("down")]);
        assert_eq!(
            change,
            Change::Lost {
                from: 1,
                reason: "down".into()
            }
        );
        assert_eq!(election.writer(), None);
        assert!(matches!(
            election.update(&[OK, no("down")]),
            Change::Elected { to: 0, .. }
        ));
    }

    #[test]
    fn with_failback_the_first_listed_server_takes_the_role_back() {
        let mut election = WriterElection::new(true);
        election.update(&[no("down"), OK]);
        assert_eq!(election.writer(), Some(1));
        assert!(moved(1, 0)(&election.update(&[OK, OK])));
        // Never to a later server while the writer qualifies.
        assert_eq!(election.update(&[OK, OK, OK]), Change::None);
    }

    #[test]
    fn a_pool_that_shrinks_under_the_writer_moves_the_role() {
        let mut election = WriterElection::new(false);
        election.update(&[no("down"), no("down"), OK]);
        let change = election.update(&[OK, no("down")]);
        assert!(matches!(&change, Change::Moved { from: 2, to: 0, reason } if reason.contains("no longer")));
    }

    #[test]
    fn promote_moves_the_role_only_to_a_qualifying_server() {
        let mut election = WriterElection::new(false);
        election.update(&[OK, OK, no("replica SQL thread not running")]);
        assert!(moved(0, 1)(&election.promote(1, &[OK, OK, OK]).unwrap()));
        assert_eq!(election.writer(), Some(1));
        let refused = election.promote(2, &[OK, OK, no("read_only is ON")]).unwrap_err();
        assert!(refused.contains("read_only is ON"), "{refused}");
        assert!(election.promote(7, &[OK]).is_err());
        assert_eq!(election.promote(1, &[OK, OK]), Ok(Change::None));
        // Promoted, the role is as sticky as ever.
        assert_eq!(election.update(&[OK, OK]), Change::None);
        assert_eq!(election.writer(), Some(1));
    }

    #[test]
    fn with_failback_a_promotion_holds_and_the_role_returns_to_the_promoted_server() {
        let mut election = WriterElection::new(true);
        election.update(&[OK, OK]);
        assert!(moved(0, 1)(&election.promote(1, &[OK, OK]).unwrap()));
        // The first listed server qualifies, but the operator chose the second.
        assert_eq!(election.update(&[OK, OK]), Change::None);
        assert!(moved(1, 0)(&election.update(&[OK, no("down")])));
        assert!(moved(0, 1)(&election.update(&[OK, OK])));
    }

    #[test]
    fn at_most_one_writer_through_any_sequence_of_verdicts() {
        // Every sequence of 6 rounds over 3 servers each up or down (a fixed pseudo-random walk):
        // the writer, when there is one, always qualifies in the round that chose it.
        let mut seed = 0x2545_f491_u64;
        for failback in [false, true] {
            let mut election = WriterElection::new(failback);
            for _ in 0..2000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let verdicts: Vec<Verdict> = (0..3)
                    .map(|i| if seed >> (i * 8) & 3 == 0 { no("down") } else { OK })
                    .collect();
                let before = election.writer();
                let change = election.update(&verdicts);
                match election.writer() {
                    Some(w) => assert!(verdicts[w].is_ok(), "{verdicts:?} {change:?}"),
                    None => assert!(verdicts.iter().all(Result::is_err), "{verdicts:?}"),
                }
                if change == Change::None {
                    assert_eq!(before, election.writer());
                }
                if !failback {
                    // Sticky: a writer that still qualifies is never replaced.
                    if let Some(b) = before.filter(|&b| verdicts[b].is_ok()) {
                        assert_eq!(election.writer(), Some(b));
                    }
                }
            }
        }
    }
}
