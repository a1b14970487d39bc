//! The OpenAPI 3 document of the REST API, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::OpenApi;

use super::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Panopticon", description = "Stored Kubernetes pod metrics."),
    paths(
        api::list_metrics,
        api::latest,
        api::series,
        api::pods,
        api::services,
        api::namespaces,
        api::nodes
    ),
    components(schemas(
        api::ErrorBody,
        api::MetricsPage,
        api::MetricsList,
        api::DistinctList,
        api::SeriesResponse,
        api::Series,
        api::SeriesPoint
    ))
)]
pub(crate) struct ApiDoc;

pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
