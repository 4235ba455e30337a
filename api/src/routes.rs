//! The route table. Unknown paths and methods get JSON:API errors too.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, Route};

use crate::error::ApiError;
use crate::resources::{
    configuration_versions, organizations, runs, vcs_connections, vcs_events, workspaces,
};
use crate::{health, metrics, webhooks};

/// The pattern of the route a request matched (`/api/v2/workspaces/{id}`), found once
/// per request: matching walks the route table, and both the metrics and the
/// authentication middleware need it.
#[derive(Clone)]
pub struct RoutePattern(pub Option<std::rc::Rc<str>>);

impl RoutePattern {
    pub fn of(req: &actix_web::dev::ServiceRequest) -> Option<std::rc::Rc<str>> {
        if let Some(found) = req.extensions().get::<RoutePattern>() {
            return found.0.clone();
        }
        let pattern: Option<std::rc::Rc<str>> = req.match_pattern().map(Into::into);
        req.extensions_mut().insert(RoutePattern(pattern.clone()));
        pattern
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("no route for {}", req.path())))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

/// A resource whose unlisted methods answer 405.
fn resource(path: &str, routes: Vec<Route>) -> actix_web::Resource {
    routes
        .into_iter()
        .fold(web::resource(path), |resource, route| resource.route(route))
        .default_service(web::to(method_not_allowed))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", vec![web::get().to(health::healthz)]))
        .service(resource("/readyz", vec![web::get().to(health::readyz)]))
        .service(resource("/metrics", vec![web::get().to(metrics::metrics)]))
        .service(
            web::scope("/api/v2")
                .service(resource("/ping", vec![web::get().to(health::ping)]))
                .service(resource(
                    "/vcs-events/github",
                    vec![web::post().to(webhooks::github)],
                ))
                .service(resource(
                    "/vcs-events/gitlab",
                    vec![web::post().to(webhooks::gitlab)],
                ))
                .service(resource(
                    "/organizations/{org}",
                    vec![web::get().to(organizations::show)],
                ))
                .service(resource(
                    "/organizations/{org}/vcs-connections",
                    vec![
                        web::post().to(vcs_connections::create),
                        web::get().to(vcs_connections::list),
                    ],
                ))
                .service(resource(
                    "/vcs-connections/{id}",
                    vec![
                        web::get().to(vcs_connections::show),
                        web::patch().to(vcs_connections::update),
                        web::delete().to(vcs_connections::delete),
                    ],
                ))
                .service(resource(
                    "/organizations/{org}/workspaces",
                    vec![
                        web::post().to(workspaces::create),
                        web::get().to(workspaces::list),
                    ],
                ))
                .service(resource(
                    "/organizations/{org}/workspaces/{name}",
                    vec![
                        web::get().to(workspaces::show_by_name),
                        web::patch().to(workspaces::update_by_name),
                        web::delete().to(workspaces::delete_by_name),
                    ],
                ))
                .service(resource(
                    "/workspaces/{id}",
                    vec![
                        web::get().to(workspaces::show),
                        web::patch().to(workspaces::update),
                        web::delete().to(workspaces::delete),
                    ],
                ))
                .service(resource(
                    "/workspaces/{id}/actions/poll-vcs",
                    vec![web::post().to(workspaces::poll_vcs)],
                ))
                .service(resource(
                    "/workspaces/{id}/runs",
                    vec![web::get().to(runs::list)],
                ))
                .service(resource(
                    "/workspaces/{id}/configuration-versions",
                    vec![web::get().to(configuration_versions::list)],
                ))
                .service(resource(
                    "/workspaces/{id}/vcs-events",
                    vec![web::get().to(vcs_events::list)],
                ))
                .service(resource("/runs/{id}", vec![web::get().to(runs::show)]))
                .service(resource(
                    "/runs/{id}/actions/cancel",
                    vec![web::post().to(runs::cancel)],
                ))
                .service(resource(
                    "/runs/{id}/actions/apply",
                    vec![web::post().to(runs::apply)],
                ))
                .service(resource(
                    "/runs/{id}/actions/discard",
                    vec![web::post().to(runs::discard)],
                ))
                .service(resource(
                    "/runs/{id}/actions/transition",
                    vec![web::post().to(runs::transition)],
                ))
                .service(resource(
                    "/configuration-versions/{id}",
                    vec![web::get().to(configuration_versions::show)],
                ))
                .service(resource(
                    "/configuration-versions/{id}/ingress-attributes",
                    vec![web::get().to(configuration_versions::ingress_attributes)],
                ))
                .service(resource(
                    "/configuration-versions/{id}/download",
                    vec![web::get().to(configuration_versions::download)],
                )),
        )
        .default_service(web::to(not_found));
}
