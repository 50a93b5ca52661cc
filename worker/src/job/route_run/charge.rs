//! What an answer cost: priced from what the provider said it made, recorded once per attempt before its pictures
//! are stored (the provider charged for the answer whatever happens to them). Pictures held in memory are checked
//! first, so the charge and their storage intents go to Postgres in one statement; pictures behind URLs are stored
//! beside the charge, as their downloads may take a while.

use super::RouteRun;
use crate::providers::ProviderOutput;
use crate::store::{StoreError, check_inline, store_all, write_all};
use imagegen_shared::cost::pricing::{Answer, price_answer};
use imagegen_shared::db::costs::{self, NewCharge, Settlement};
use imagegen_shared::db::{DbError, NewImage, RouteAttempt};
use imagegen_shared::domain::ImageSize;

impl RouteRun<'_> {
    /// Records the answer's charge and stores its pictures: one statement for the charge and the intents of
    /// pictures in memory; a charge written alone when a picture turns out bad (it was charged all the same).
    pub(super) async fn charge_and_store(
        &self,
        output: &ProviderOutput,
        attempt: RouteAttempt,
    ) -> Result<Vec<NewImage>, StoreError> {
        let (ctx, job, request) = (self.ctx.store(), self.job, &self.route.request);
        let charge = self.charge_for(output, attempt);
        match check_inline(ctx, job, request, self.key(), output).await {
            Some(Ok(checked)) => {
                let keys = checked.keys();
                let written = self.write_charge(&charge, &keys).await;
                match written {
                    Ok(late) => {
                        self.charged(&charge, Ok(late), output).await;
                        write_all(ctx, checked).await
                    }
                    Err(e) => {
                        self.charged(&charge, Err(&e), output).await;
                        Err(StoreError::Db(e))
                    }
                }
            }
            Some(Err(bad)) => {
                let written = self.write_charge(&charge, &[]).await;
                self.charged(&charge, written.as_ref().map(Option::clone), output)
                    .await;
                Err(bad)
            }
            None => {
                let charged = async {
                    let written = self.write_charge(&charge, &[]).await;
                    self.charged(&charge, written.as_ref().map(Option::clone), output)
                        .await;
                };
                let stored = store_all(ctx, job, request, self.key(), output);
                tokio::join!(charged, stored).1
            }
        }
    }

    /// Writes `charge` and the storage intents of the pictures about to be stored under `keys` (none: the charge
    /// alone), gathered with the other charges of the moment where they are (Postgres).
    async fn write_charge(
        &self,
        charge: &NewCharge<'_>,
        keys: &[String],
    ) -> Result<Option<Settlement>, DbError> {
        let db = &self.ctx.pool;
        match &self.ctx.gathered {
            Some(gathered) => gathered.charges.record(db, charge, keys).await,
            None => costs::record_charge_and_intents(db, charge, keys, &self.ctx.worker_id).await,
        }
    }

    /// The charge for `output`, priced by the route's model from what the provider said it made.
    fn charge_for(&self, output: &ProviderOutput, attempt: RouteAttempt) -> NewCharge<'_> {
        let request = &self.route.request;
        // What the provider said it made (`answered`: the options a GPT image answer echoes).
        let answered = |key: &str| {
            output
                .meta
                .get("answered")
                .and_then(|a| a.get(key))
                .or_else(|| output.meta.get(key))
                .and_then(serde_json::Value::as_str)
        };
        let echoed = answered("size").and_then(|s| s.parse::<ImageSize>().ok());
        let size = request
            .size()
            .exact()
            .or(echoed)
            .unwrap_or(ImageSize::new(1024, 1024));
        let answer = Answer {
            usage: output.usage.as_ref(),
            credits: output
                .meta
                .get("cost_credits")
                .and_then(serde_json::Value::as_f64),
            quality: answered("quality")
                .and_then(|q| q.parse().ok())
                .or(request.quality()),
            sizes: vec![size; output.images.len()],
        };
        let cost = price_answer(&self.route.model, imagegen_shared::domain::today(), &answer);
        NewCharge {
            job_id: self.job.id,
            attempt: attempt.total,
            owner: self.job.owner.as_str(),
            api_key_id: self.job.api_key_id,
            provider: self.route.provider().as_str(),
            model: self.route.model.id.as_str(),
            cost,
            images: i32::try_from(output.images.len()).unwrap_or(i32::MAX),
        }
    }

    /// Counts a written charge: against a budget settled meanwhile, and in the cost and picture metrics. A charge
    /// that could not be written is logged, never fails the job by itself: the pictures are worth more than the
    /// record.
    async fn charged(
        &self,
        charge: &NewCharge<'_>,
        written: Result<Option<Settlement>, &DbError>,
        output: &ProviderOutput,
    ) {
        match written {
            Ok(None) => {}
            // The job's budget was settled meanwhile (its client canceled it): the counters get the charge now.
            Ok(Some(late)) => {
                if let Err(e) = self.ctx.budgets.settle(&late).await {
                    tracing::warn!(error = %e, "could not count a late charge against the budget");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, usd_micros = charge.cost.usd_micros, "could not record a provider charge");
                return;
            }
        }
        let (provider, model) = (charge.provider.to_owned(), charge.model.to_owned());
        // A float total in USD (the metrics crate's counters are integers; Prometheus' rate() reads it alike).
        metrics::gauge!("imagegen_cost_usd_total", "provider" => provider.clone(), "model" => model.clone())
            .increment(imagegen_shared::cost::usd(charge.cost.usd_micros));
        metrics::counter!("imagegen_images_generated_total", "provider" => provider, "model" => model)
            .increment(output.images.len() as u64);
    }
}
