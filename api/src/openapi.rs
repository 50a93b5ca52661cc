//! The OpenAPI 3.1 document, generated from the handlers' annotations and the view types.

use crate::error::ErrorBody;
use crate::routes;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "imagegen", description = "Image generation over DALL-E 3 and Flux Schnell: submit, wait or poll, download.",
         license(name = "Apache-2.0")),
    paths(
        routes::generate::generate, routes::generate::generate_batch,
        routes::jobs::create_job, routes::jobs::get_job, routes::jobs::list_jobs, routes::jobs::cancel_job,
        routes::batches::get_batch,
        routes::images::get_image, routes::images::download_image, routes::images::delete_image,
        routes::providers::list_providers,
        routes::health::health, routes::health::ready, routes::health::live,
        routes::metrics::render,
        routes::admin::create_key, routes::admin::list_keys, routes::admin::revoke_key,
    ),
    components(schemas(ErrorBody)),
    tags((name = "generation"), (name = "jobs"), (name = "images"), (name = "health"), (name = "admin"))
)]
pub struct ApiDoc;
