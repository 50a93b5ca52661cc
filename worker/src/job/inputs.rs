//! An edit job's inputs, read once per run from the objects its `job_inputs` rows name, so every route and every
//! retry sends the same bytes; inputs named by URL are fetched and stored first (`input_fetch`), once for the job.
//! A missing, damaged or unusable input cannot get better by trying again: it ends the job (`invalid_input`).

use super::context::JobContext;
use super::input_fetch;
use crate::providers::{EditInputs, InputBytes};
use imagegen_shared::db::job_inputs::{self, InputRole, JobInput};
use imagegen_shared::db::{DbError, JobRecord};
use imagegen_shared::storage::{ImageStorage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The rows could not be read: the attempt is worth repeating.
    #[error("could not read the job's inputs: {0}")]
    Db(#[from] DbError),
    /// Storage could not be read now: the attempt is worth repeating.
    #[error("could not read the job's inputs from storage: {0}")]
    Storage(String),
    /// An input cannot be sent (refused URL, not an image, too large, missing, damaged, ...): final.
    #[error("{0}")]
    Unusable(String),
    /// The job stopped being this worker's while its inputs were fetched.
    #[error("the job is no longer this worker's")]
    NotOurs,
}

/// The inputs of `job` when it is an edit (`None` otherwise), with `input_fidelity` left to each route. Inputs
/// named by URL and not stored yet are fetched and stored first.
pub async fn load(ctx: &JobContext, job: &JobRecord) -> Result<Option<EditInputs>, InputError> {
    let Some(edit) = job.request.0.edit() else {
        return Ok(None);
    };
    let (pool, storage) = (&ctx.pool, &ctx.storage);
    let mut rows = job_inputs::load(pool, job.id).await?;
    if rows.iter().any(|r| r.storage_key.is_none()) {
        rows = input_fetch::fetch_missing(ctx, job, rows).await?;
    }
    let mut images = Vec::new();
    let mut mask = None;
    for row in &rows {
        let input = read(storage, row).await?;
        match row.role {
            InputRole::Image => images.push(input),
            InputRole::Mask => mask = Some(input),
        }
    }
    if images.len() != usize::from(edit.images) || mask.is_some() != edit.mask {
        return Err(InputError::Unusable(format!(
            "the edit names {} input images{} but {} images{} are recorded",
            edit.images,
            if edit.mask { " and a mask" } else { "" },
            images.len(),
            if mask.is_some() { " and a mask" } else { "" },
        )));
    }
    Ok(Some(EditInputs {
        images,
        mask,
        input_fidelity: edit.input_fidelity,
    }))
}

/// One stored input's bytes, checked against what was recorded of it.
async fn read(storage: &ImageStorage, row: &JobInput) -> Result<InputBytes, InputError> {
    let what = format!("input {} {}", row.role.as_str(), row.position);
    let Some(key) = &row.storage_key else {
        // `input_fetch` stores every URL input before this reads any.
        return Err(InputError::Unusable(format!("{what} was never stored")));
    };
    let bytes = async { storage.get(key).await?.bytes().await.map_err(Into::into) }
        .await
        .map_err(|e: StorageError| match e {
            StorageError::NotFound => {
                InputError::Unusable(format!("{what} is missing from storage"))
            }
            other => InputError::Storage(format!("{what}: {other}")),
        })?;
    if row.size_bytes.is_some_and(|n| n != bytes.len() as i64) {
        return Err(InputError::Unusable(format!(
            "{what} is damaged: {} bytes stored, {} recorded",
            bytes.len(),
            row.size_bytes.unwrap_or_default()
        )));
    }
    let (Some(content_type), Some(width), Some(height)) =
        (&row.content_type, row.width, row.height)
    else {
        return Err(InputError::Unusable(format!(
            "{what} has no recorded type or size"
        )));
    };
    Ok(InputBytes {
        bytes,
        content_type: content_type.clone(),
        width: u32::try_from(width).unwrap_or_default(),
        height: u32::try_from(height).unwrap_or_default(),
    })
}
