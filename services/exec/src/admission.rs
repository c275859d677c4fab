//! Admission: `slots` runs at once plus a bounded queue of invocations
//! waiting for a slot; beyond that, work is refused (429). The heartbeat
//! reads the counts and is woken whenever they change.

use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Slots plus a bounded waiting room, shared by the worker and the heartbeat.
#[derive(Clone)]
pub struct Admission {
    admitted: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    slot_count: u32,
    capacity: u32,
    /// Woken when an invocation is admitted, starts or is done.
    changed: Arc<Notify>,
}

/// An admitted invocation, waiting for or holding a slot: its queue place
/// and slot are held until it drops.
pub struct Ticket {
    admitted: Option<OwnedSemaphorePermit>,
    slot: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    changed: Arc<Notify>,
}

impl Admission {
    /// `slots` runs at once (at least one) and `queue` more waiting.
    pub fn new(slots: u32, queue: u32) -> Self {
        let slots = slots.max(1);
        Self {
            admitted: Arc::new(Semaphore::new((slots + queue) as usize)),
            slots: Arc::new(Semaphore::new(slots as usize)),
            slot_count: slots,
            capacity: slots + queue,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Admits one invocation, or `None` when slots and queue are full.
    pub fn try_admit(&self) -> Option<Ticket> {
        let admitted = self.admitted.clone().try_acquire_owned().ok()?;
        self.changed.notify_one();
        Some(Ticket {
            admitted: Some(admitted),
            slot: None,
            slots: self.slots.clone(),
            changed: self.changed.clone(),
        })
    }

    /// Waits until an invocation was admitted, started or finished since
    /// the last call (returns at once if one was).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// (running, queued) now.
    pub fn counts(&self) -> (u32, u32) {
        let running = self.slot_count - self.slots.available_permits() as u32;
        let admitted = self.capacity - self.admitted.available_permits() as u32;
        (running, admitted.saturating_sub(running))
    }
}

impl Ticket {
    /// Waits for a free slot, held until the ticket drops; `None` if the
    /// slots are closed.
    pub async fn slot(mut self) -> Option<Ticket> {
        self.slot = Some(self.slots.clone().acquire_owned().await.ok()?);
        self.changed.notify_one();
        Some(self)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Free the places first: the load report this wakes counts them.
        self.slot.take();
        self.admitted.take();
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `changed` fires within a moment.
    async fn notified(admission: &Admission) -> bool {
        tokio::time::timeout(Duration::from_millis(50), admission.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn slots_then_queue_then_refusal() {
        let admission = Admission::new(2, 1);
        let a = admission.try_admit().expect("first admitted");
        let b = admission.try_admit().expect("second admitted");
        let c = admission
            .try_admit()
            .expect("third admitted into the queue");
        assert!(admission.try_admit().is_none(), "a fourth is refused (429)");
        assert_eq!(admission.counts(), (0, 3), "admitted, none running yet");

        let a = a.slot().await.expect("slot");
        let b = b.slot().await.expect("slot");
        assert_eq!(admission.counts(), (2, 1));
        // Both slots are taken: the third waits.
        let waiting = tokio::spawn(c.slot());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(admission.counts(), (2, 1));

        drop(a);
        let c = waiting.await.unwrap().expect("slot after one was freed");
        assert_eq!(admission.counts(), (2, 0));
        assert!(
            admission.try_admit().is_some(),
            "a queue place is free again"
        );
        drop((b, c));
        assert_eq!(admission.counts(), (0, 0));
    }

    #[tokio::test]
    async fn at_least_one_slot() {
        let admission = Admission::new(0, 0);
        let only = admission.try_admit().expect("one slot");
        assert!(admission.try_admit().is_none());
        let only = only.slot().await.expect("slot");
        assert_eq!(admission.counts(), (1, 0));
        drop(only);
        assert_eq!(admission.counts(), (0, 0));
    }

    #[tokio::test]
    async fn every_change_wakes_the_heartbeat() {
        let admission = Admission::new(1, 1);
        assert!(!notified(&admission).await, "nothing happened yet");

        let ticket = admission.try_admit().expect("admitted");
        assert!(notified(&admission).await, "admitted");
        assert!(!notified(&admission).await, "told once");

        let ticket = ticket.slot().await.expect("slot");
        assert!(notified(&admission).await, "started");

        assert!(admission.try_admit().is_some(), "queued, then dropped");
        assert!(notified(&admission).await, "queued and done");

        drop(ticket);
        assert!(notified(&admission).await, "done");
        assert!(!notified(&admission).await);
    }

    #[tokio::test]
    async fn a_dropped_ticket_releases_its_slot_before_waking() {
        let admission = Admission::new(1, 0);
        let ticket = admission.try_admit().unwrap().slot().await.unwrap();
        assert_eq!(admission.counts(), (1, 0));
        assert!(notified(&admission).await, "admitted and started");
        let watcher = {
            let admission = admission.clone();
            tokio::spawn(async move {
                admission.changed().await;
                admission.counts()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(ticket);
        assert_eq!(watcher.await.unwrap(), (0, 0), "the report counts it freed");
        assert!(admission.try_admit().is_some(), "its slot is free");
    }
}
