# Run by `cmake --install` (install(CODE) in cachesvc/CMakeLists.txt): writes
# kvstashd.service with the paths of this install (--prefix, DESTDIR honoured):
# the binary in ExecStart/ExecPaths and the docs in Documentation=.
# In: KVS_UNIT_SRC, KVS_BINDIR, KVS_DOCDIR, KVS_UNITDIR (relative to the
# prefix, or absolute).
foreach(v BINDIR DOCDIR UNITDIR)
  if(IS_ABSOLUTE "${KVS_${v}}")
    set(full_${v} "${KVS_${v}}")
  else()
    set(full_${v} "${CMAKE_INSTALL_PREFIX}/${KVS_${v}}")
  endif()
endforeach()
file(READ "${KVS_UNIT_SRC}" unit)
string(REPLACE "/usr/local/bin/kvstashd" "${full_BINDIR}/kvstashd" unit "${unit}")
string(REPLACE "file:///usr/local/share/doc/kvstash" "file://${full_DOCDIR}" unit "${unit}")
set(dest "$ENV{DESTDIR}${full_UNITDIR}")
file(MAKE_DIRECTORY "${dest}")
message(STATUS "Installing: ${dest}/kvstashd.service")
file(WRITE "${dest}/kvstashd.service" "${unit}")
