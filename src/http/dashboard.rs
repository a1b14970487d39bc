//! The dashboard: one page and its assets, compiled into the binary.

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, web};

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/assets/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "/assets/dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "/assets/chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/chart.umd.min.js"),
    ),
];

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    for (path, content_type, body) in ASSETS {
        cfg.route(
            path,
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .content_type(*content_type)
                    .insert_header(CacheControl(vec![CacheDirective::NoCache]))
                    .body(*body)
            }),
        );
    }
}
