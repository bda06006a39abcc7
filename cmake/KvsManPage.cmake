# cmake -DBIN=<program> -DNAME=<name> -DSECTION=<n> -DVERSION=<v> -DSUMMARY=<text>
#       -DOUT=<file.n> -P KvsManPage.cmake
# A man page made from the program's own --help (what it says is what it does):
# NAME, SYNOPSIS/OPTIONS verbatim, VERSION, SEE ALSO.
execute_process(COMMAND ${BIN} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR help STREQUAL "")
  message(FATAL_ERROR "${BIN} --help failed (${rc}): ${err}")
endif()
# roff: a backslash is \e; a line starting with . or ' would be a request
string(REPLACE "\\" "\\e" help "${help}")
string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
string(TOUPPER "${NAME}" upper)
string(TIMESTAMP date "%Y-%m-%d" UTC)
file(WRITE ${OUT}
".TH ${upper} ${SECTION} \"${date}\" \"kvstash ${VERSION}\" \"kvstash\"\n"
".SH NAME\n${NAME} \\- ${SUMMARY}\n"
".SH SYNOPSIS AND OPTIONS\n"
"The text of\n.B ${NAME} --help\n(version ${VERSION}):\n"
".PP\n.nf\n${help}.fi\n"
".SH SEE ALSO\n"
"The documentation installed with kvstash in share/doc/kvstash (kvstashd.md, cli.md,\n"
"client.md, protocol.md), the docs/ folder of the kvstash sources.\n")
