# Dependencies, each with a message naming the Debian package when missing.
find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "pkg-config not found: apt-get install pkg-config")
endif()

macro(rp_require_pkg var module pkg)
  pkg_check_modules(${var} IMPORTED_TARGET ${module})
  if(NOT ${var}_FOUND)
    message(FATAL_ERROR "${module} not found: apt-get install ${pkg}")
  endif()
endmacro()

rp_require_pkg(LIBUV libuv libuv1-dev)
rp_require_pkg(YAML yaml-0.1 libyaml-dev)
rp_require_pkg(IDN2 libidn2 libidn2-dev)
rp_require_pkg(JANSSON jansson libjansson-dev)
rp_require_pkg(SQLITE3 sqlite3 libsqlite3-dev)
# htpasswd verification (bcrypt, apr1-MD5, SHA1, crypt), as Apache and nginx use it.
rp_require_pkg(APR apr-1 libapr1-dev)
rp_require_pkg(APRUTIL apr-util-1 libaprutil1-dev)

find_package(OpenSSL 1.1.1)
if(NOT OPENSSL_FOUND)
  message(FATAL_ERROR "OpenSSL >= 1.1.1 not found: apt-get install libssl-dev")
endif()
find_package(CURL)
if(NOT CURL_FOUND)
  message(FATAL_ERROR "libcurl not found: apt-get install libcurl4-openssl-dev")
endif()

# llhttp: a packaged library where the distribution has one, else the C
# sources Debian 12's node-llhttp ships, compiled as their own target (they
# do not pass our -Wextra -Werror) in strict mode.
pkg_check_modules(LLHTTP IMPORTED_TARGET libllhttp)
if(LLHTTP_FOUND)
  add_library(rp::llhttp ALIAS PkgConfig::LLHTTP)
  message(STATUS "llhttp: system library ${LLHTTP_VERSION}")
else()
  set(RP_LLHTTP_SRC /usr/share/llhttp CACHE PATH "llhttp C sources")
  set(RP_LLHTTP_INC /usr/share/include/llhttp CACHE PATH "llhttp header")
  if(NOT EXISTS ${RP_LLHTTP_SRC}/llhttp.c OR NOT EXISTS ${RP_LLHTTP_INC}/llhttp.h)
    message(FATAL_ERROR "llhttp not found (no libllhttp pkg-config, no ${RP_LLHTTP_SRC}/llhttp.c): "
                        "apt-get install node-llhttp (Debian 12) or libllhttp-dev")
  endif()
  add_library(rp_llhttp STATIC ${RP_LLHTTP_SRC}/api.c ${RP_LLHTTP_SRC}/http.c
                               ${RP_LLHTTP_SRC}/llhttp.c)
  target_include_directories(rp_llhttp SYSTEM PUBLIC ${RP_LLHTTP_INC})
  target_compile_definitions(rp_llhttp PUBLIC LLHTTP_STRICT_MODE=1)
  target_compile_options(rp_llhttp PRIVATE -w)
  set_target_properties(rp_llhttp PROPERTIES POSITION_INDEPENDENT_CODE ON)
  add_library(rp::llhttp ALIAS rp_llhttp)
  message(STATUS "llhttp: compiled from ${RP_LLHTTP_SRC}")
endif()

# sd_notify (Type=notify units): regproxy speaks the protocol itself
# (src/util/notify.c) and needs no libsystemd. -DRP_SYSTEMD=OFF turns it off
# and makes the generated unit Type=simple.
option(RP_SYSTEMD "Send sd_notify readiness (Type=notify unit)" ON)
set(RP_HAVE_SYSTEMD ${RP_SYSTEMD})
if(RP_HAVE_SYSTEMD)
  message(STATUS "sd_notify: built in (unit Type=notify)")
else()
  message(STATUS "sd_notify: off (RP_SYSTEMD=OFF); unit Type=simple")
endif()
