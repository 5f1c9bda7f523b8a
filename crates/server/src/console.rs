//! The web console: a page and its script and style, embedded in the binary and served
//! at `/console`. The page calls keygate's own API with the key its user signs in with,
//! so it adds no authority of its own; what it serves is public and the same for all.

use std::sync::LazyLock;

use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};

use crate::assets::Asset;

/// Where the console lives.
pub const PATH: &str = "/console";

/// Only the console's own files, from its own origin; no inline script or style, no
/// framing, no form posting anywhere, no plug-ins, and no HTML assigned to the DOM from
/// strings (Trusted Types with no policy: the page builds its elements one by one).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src data:; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

static PAGE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        &include_bytes!("../console/index.html")[..],
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        &include_bytes!("../console/console.js")[..],
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        &include_bytes!("../console/console.css")[..],
        "text/css; charset=utf-8",
    )
});

/// The console's routes: the page at `/console` (and `/console/`), its two files beside it.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(crate::app::read(PATH, page))
        .service(crate::app::read("/console/", page))
        .service(crate::app::read("/console/console.js", script))
        .service(crate::app::read("/console/console.css", style));
}

async fn page(request: HttpRequest) -> HttpResponse {
    PAGE.serve(&request, protect)
}

async fn script(request: HttpRequest) -> HttpResponse {
    SCRIPT.serve(&request, protect)
}

async fn style(request: HttpRequest) -> HttpResponse {
    STYLE.serve(&request, protect)
}

/// The headers every console answer carries.
fn protect(response: &mut HttpResponseBuilder) {
    response
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        .insert_header(("Cross-Origin-Resource-Policy", "same-origin"));
}
