//! An edit job's inputs, read once per attempt from the objects its `job_inputs` rows name, so every route and every
//! retry sends the same bytes. A missing or damaged input cannot get better by trying again: it ends the job.

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
    /// An input cannot be sent (missing, damaged, not what was recorded): final.
    #[error("{0}")]
    Unusable(String),
}

/// The inputs of `job` when it is an edit (`None` otherwise), with `input_fidelity` left to each route.
pub async fn load(
    pool: &imagegen_shared::db::Db,
    storage: &ImageStorage,
    job: &JobRecord,
) -> Result<Option<EditInputs>, InputError> {
    let Some(edit) = job.request.0.edit() else {
        return Ok(None);
    };
    let rows = job_inputs::load(pool, job.id).await?;
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
        // URL inputs are to be fetched and stored before the first call; the API accepts none yet.
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
