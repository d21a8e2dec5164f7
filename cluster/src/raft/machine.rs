//! The bridge between openraft's state-machine interface and the application's
//! [`StateMachine`]: applies committed commands in order, builds and installs snapshots, and
//! tells waiters how far this node has applied.

use std::io;
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::log::RaftLog;
use super::{StateMachine, TypeConfig};

type LogId = LogIdOf<TypeConfig>;
type Membership = StoredMembershipOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

struct Applied {
    last: Option<LogId>,
    membership: Membership,
}

/// The state machine as openraft sees it.
#[derive(Clone)]
pub(crate) struct Machine {
    app: Arc<dyn StateMachine>,
    log: RaftLog,
    applied: Arc<Mutex<Applied>>,
    progress: Arc<watch::Sender<u64>>,
}

impl Machine {
    /// The machine, restored from the log's newest snapshot if there is one.
    pub(crate) fn new(app: Arc<dyn StateMachine>, log: RaftLog) -> io::Result<Machine> {
        let mut applied = Applied {
            last: None,
            membership: Membership::default(),
        };
        if let Some((meta, data)) = log.snapshot() {
            app.restore(&data).map_err(io::Error::other)?;
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        let index = applied.last.as_ref().map_or(0, |id| id.index);
        Ok(Machine {
            app,
            log,
            applied: Arc::new(Mutex::new(applied)),
            progress: Arc::new(watch::channel(index).0),
        })
    }

    /// Watches the index of the last applied entry.
    pub(crate) fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // Taken under the same lock `apply` holds per entry: the data is exactly the state at
        // `last`.
        let (meta, data) = {
            let applied = self.applied.lock();
            let data = self.app.snapshot();
            let meta = SnapshotMeta {
                last_log_id: applied.last,
                last_membership: applied.membership.clone(),
            };
            (meta, data)
        };
        self.log
            .checkpoint(Some((meta.clone(), data.clone())))
            .await?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let applied = self.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let response = {
                let mut applied = self.applied.lock();
                let response = match &entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(command) => self.app.apply(index, &command.0),
                    EntryPayload::Membership(membership) => {
                        applied.membership =
                            Membership::new(Some(entry.log_id), membership.clone());
                        Vec::new()
                    }
                };
                applied.last = Some(entry.log_id);
                response
            };
            self.progress.send_replace(index);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        {
            let mut applied = self.applied.lock();
            self.app.restore(&snapshot).map_err(io::Error::other)?;
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        self.progress.send_replace(index);
        self.log.checkpoint(Some((meta.clone(), snapshot))).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        Ok(self
            .log
            .snapshot()
            .map(|(meta, data)| SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            }))
    }
}
