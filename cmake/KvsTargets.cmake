# Helpers shared by every folder's CMakeLists.txt.

# kvs_add_test(NAME n SOURCES s... [LIBS l...] [LABELS x...] [TIMEOUT sec] [ARGS a...])
# A CUnit test binary registered with ctest. Exit code 77 means "skipped"
# (GPU tests without a device, tests whose model could not be fetched).
function(kvs_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS;ARGS;ENV" ${ARGN})
  add_executable(test_${T_NAME} ${T_SOURCES})
  target_link_libraries(test_${T_NAME} PRIVATE kvs_testutil ${T_LIBS})
  add_test(NAME ${T_NAME} COMMAND test_${T_NAME} ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  # the test's own watchdog fires first and prints backtraces (tests/common/kvs_test.c)
  math(EXPR T_WATCHDOG "${T_TIMEOUT} - ${T_TIMEOUT} / 10 - 5")
  set_tests_properties(${T_NAME} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "KVS_SOURCE_DIR=${PROJECT_SOURCE_DIR};KVS_BUILD_DIR=${PROJECT_BINARY_DIR};KVS_TEST_WATCHDOG_S=${T_WATCHDOG};${T_ENV}")
  if(T_LABELS)
    set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}")
  endif()
endfunction()

# kvs_add_fuzz(NAME n SOURCE file [LIBS l...] [CORPUS dir])
# A libFuzzer target (fuzz_n, with KVS_FUZZ=ON and clang) that also builds,
# with any compiler, as a regression test replaying every file in CORPUS.
function(kvs_add_fuzz)
  cmake_parse_arguments(F "" "NAME;SOURCE;CORPUS" "LIBS" ${ARGN})
  add_executable(fuzzreplay_${F_NAME} ${F_SOURCE} ${PROJECT_SOURCE_DIR}/tests/common/fuzz_replay.c)
  target_link_libraries(fuzzreplay_${F_NAME} PRIVATE ${F_LIBS})
  add_test(NAME fuzz_${F_NAME}_replay COMMAND fuzzreplay_${F_NAME} ${F_CORPUS})
  set_tests_properties(fuzz_${F_NAME}_replay PROPERTIES LABELS fuzz TIMEOUT 600)
  if(KVS_FUZZ AND CMAKE_C_COMPILER_ID STREQUAL "Clang")
    add_executable(fuzz_${F_NAME} ${F_SOURCE})
    target_compile_options(fuzz_${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(fuzz_${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(fuzz_${F_NAME} PRIVATE ${F_LIBS})
  endif()
endfunction()

# kvs_man_page(TARGET t NAME n SECTION s SUMMARY "...")
# <n>.<s>, generated at build time from `t --help` (cmake/KvsManPage.cmake),
# installed into share/man/man<s> in component COMPONENT (default server).
function(kvs_man_page)
  cmake_parse_arguments(M "" "TARGET;NAME;SECTION;SUMMARY;COMPONENT" "" ${ARGN})
  if(NOT M_COMPONENT)
    set(M_COMPONENT server)
  endif()
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${M_NAME}.${M_SECTION})
  add_custom_command(OUTPUT ${out}
                     COMMAND ${CMAKE_COMMAND} -DBIN=$<TARGET_FILE:${M_TARGET}> -DNAME=${M_NAME}
                             -DSECTION=${M_SECTION} -DVERSION=${PROJECT_VERSION}
                             "-DSUMMARY=${M_SUMMARY}" -DOUT=${out}
                             -P ${PROJECT_SOURCE_DIR}/cmake/KvsManPage.cmake
                     DEPENDS ${M_TARGET} ${PROJECT_SOURCE_DIR}/cmake/KvsManPage.cmake
                     COMMENT "man page ${M_NAME}.${M_SECTION} from ${M_NAME} --help" VERBATIM)
  add_custom_target(${M_NAME}-man ALL DEPENDS ${out})
  include(GNUInstallDirs)
  install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${M_SECTION} COMPONENT ${M_COMPONENT})
endfunction()
