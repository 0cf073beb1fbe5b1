//! What the master knows of each minion, by id.

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};
use tend_proto::v1::MinionInfo;

use crate::tables::{MINIONS, decode};
use crate::{Store, StoreError};

impl Store {
    /// Records what the master knows of a minion.
    pub fn put_minion(&self, info: &MinionInfo) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        tx.open_table(MINIONS)?
            .insert(info.id.as_str(), info.encode_to_vec().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Every minion the master has heard from.
    pub fn minions(&self) -> Result<Vec<MinionInfo>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(MINIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode("minions", k.value(), v.value())?);
        }
        Ok(out)
    }
}
