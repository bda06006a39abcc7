# cmake -DBIN=<kvstashd> -DFILE=<kvstashd.conf.example> -DMODE=check|write
#       [-DTMP=<scratch file>] -P KvsConfExample.cmake
# cachesvc/kvstashd.conf.example is `kvstashd --print-config` with the flags
# below: every option of KVS_SVC_OPTION_MAP (core/kvs_conf_options.h) with its
# help, these set, the rest commented out at their defaults. It is committed
# (docs cite it, `cmake --install` ships it) and must equal what the table
# gives: MODE=check (ctest cachesvc_conf_example) fails with a diff when it
# drifts, MODE=write (`cmake --build <build> --target kvstashd-conf-example`)
# rewrites it. A new option in the table shows up here by itself.
set(example_flags
    --data_dir=/var/lib/kvstash
    --listen=tcp://127.0.0.1:7878,ipc:///run/kvstash/kvstash.sock,tcp+stream://127.0.0.1:7880
    --ram_bytes=8G
    --disk_bytes=500G
    --cold_bytes=4T
    --log_level=info)
execute_process(COMMAND ${BIN} --print-config ${example_flags} OUTPUT_VARIABLE text
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR text STREQUAL "")
  message(FATAL_ERROR "${BIN} --print-config failed (${rc}): ${err}")
endif()
if(MODE STREQUAL "write")
  file(WRITE ${FILE} "${text}")
  message(STATUS "wrote ${FILE}")
  return()
endif()
file(READ ${FILE} committed)
if(NOT committed STREQUAL text)
  if(NOT TMP)
    set(TMP ${FILE}.generated)
  endif()
  file(WRITE ${TMP} "${text}")
  execute_process(COMMAND diff -u ${FILE} ${TMP})
  message(FATAL_ERROR "${FILE} differs from `kvstashd --print-config` (diff above: - committed, "
                      "+ generated). Rewrite it with "
                      "`cmake --build <build> --target kvstashd-conf-example` and commit it.")
endif()
message(STATUS "${FILE} matches kvstashd --print-config")
