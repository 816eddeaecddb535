# `cmake --install` into the FHS places (--prefix and DESTDIR honoured):
#   bin/regproxy, /etc/regproxy/regproxy.yml, lib/systemd/system/regproxy.service,
#   share/regproxy/systemd/… (the transparent-mode drop-in, opt-in),
#   share/man/man1/regproxy.1 (when built), share/doc/regproxy/*.md.
include(GNUInstallDirs)

# The configuration lives where regproxy looks by default, /etc, whatever the
# prefix: /usr/local/etc would be a file nobody reads.
set(RP_CONF_DIR /etc/regproxy CACHE PATH "Where the installed regproxy.yml goes")
set(RP_SYSTEMD_UNIT_DIR lib/systemd/system CACHE STRING
    "systemd system unit directory (relative to the prefix, or absolute)")

# The unit matches the build: Type=notify only when sd_notify is compiled in,
# else systemd would wait for a READY=1 that never comes and kill the service.
if(RP_HAVE_SYSTEMD)
  set(RP_UNIT_TYPE notify)
else()
  set(RP_UNIT_TYPE simple)
endif()

install(TARGETS regproxy RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# The unit names the installed binary, so it is written at install time:
# `cmake --install --prefix P` changes the prefix after configure_file ran.
install(CODE "
  set(RP_UNIT_TYPE ${RP_UNIT_TYPE})
  set(RP_CONF_DIR \"${RP_CONF_DIR}\")
  set(RP_BINDIR_FULL \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}\")
  set(CMAKE_INSTALL_FULL_DATADIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_DATADIR}\")
  set(CMAKE_INSTALL_FULL_DOCDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_DOCDIR}\")
  set(unit_dir \"${RP_SYSTEMD_UNIT_DIR}\")
  if(NOT IS_ABSOLUTE \"\${unit_dir}\")
    set(unit_dir \"\${CMAKE_INSTALL_PREFIX}/\${unit_dir}\")
  endif()
  configure_file(\"${PROJECT_SOURCE_DIR}/conf/regproxy.service.in\"
                 \"${CMAKE_BINARY_DIR}/conf/regproxy.service\" @ONLY)
  file(INSTALL \"${CMAKE_BINARY_DIR}/conf/regproxy.service\" DESTINATION \"\${unit_dir}\")
")
install(FILES conf/transparent.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/regproxy/systemd/regproxy.service.d)
# The man page is generated at build time by its own rule; install it once it exists.
install(FILES ${CMAKE_BINARY_DIR}/man/regproxy.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 OPTIONAL)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md")

# The configuration: never overwrite the administrator's edits on a
# re-install; the new default goes next to it as regproxy.yml.dist instead.
# (file(INSTALL) prepends DESTDIR itself; the EXISTS test must do it by hand.)
install(CODE "
  set(dir \"${RP_CONF_DIR}\")
  if(EXISTS \"\$ENV{DESTDIR}\${dir}/regproxy.yml\")
    message(STATUS \"Keeping: \$ENV{DESTDIR}\${dir}/regproxy.yml (new default: regproxy.yml.dist)\")
    file(INSTALL \"${PROJECT_SOURCE_DIR}/conf/regproxy.yml\" DESTINATION \"\${dir}\"
         RENAME regproxy.yml.dist)
  else()
    file(INSTALL \"${PROJECT_SOURCE_DIR}/conf/regproxy.yml\" DESTINATION \"\${dir}\")
  endif()
")
