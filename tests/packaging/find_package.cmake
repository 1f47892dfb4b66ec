# cmake -DBINARY_DIR= -DSOURCE_DIR= -DWORK_DIR= -DGENERATOR= -DMODEL_DIR= -P find_package.cmake
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(RUN_OUTPUT "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${prefix})
foreach(required include/mimo/mimo.hpp lib/cmake/mimo/mimoConfig.cmake lib/cmake/mimo/mimoConfigVersion.cmake
                 lib/cmake/mimo/mimoTargets.cmake bin/mimo)
  if(NOT EXISTS ${prefix}/${required})
    message(FATAL_ERROR "install is missing ${required}")
  endif()
endforeach()

# Every example is its own project that calls find_package(mimo CONFIG REQUIRED); they are
# configured as subdirectories of one scratch project so that their builds run in parallel (each
# is one translation unit), each still finding the package through CMAKE_PREFIX_PATH alone.
file(GLOB examples LIST_DIRECTORIES true ${SOURCE_DIR}/examples/*)
set(lists "cmake_minimum_required(VERSION 3.20)\nproject(mimo_examples LANGUAGES CXX)\n")
foreach(example ${examples})
  if(EXISTS ${example}/CMakeLists.txt)
    get_filename_component(name ${example} NAME)
    string(APPEND lists "add_subdirectory(\"${example}\" \"${name}\")\n")
  endif()
endforeach()
file(WRITE ${WORK_DIR}/examples-src/CMakeLists.txt "${lists}")
run(${CMAKE_COMMAND} -S ${WORK_DIR}/examples-src -B ${WORK_DIR} -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${prefix})
run(${CMAKE_COMMAND} --build ${WORK_DIR} --parallel)
message(STATUS "built the examples against ${prefix}")

# The quickstart example runs on the fixture model.
run(${WORK_DIR}/quickstart/quickstart ${MODEL_DIR} 4)
string(REGEX MATCH "^[0-9]+,[0-9]+,[0-9]+,[0-9]+" ids "${RUN_OUTPUT}")
if(NOT ids)
  message(FATAL_ERROR "quickstart printed no ids: ${RUN_OUTPUT}")
endif()
# The other examples run on the embedded default model (MiMo's vocabulary and tokenizer).
run(${WORK_DIR}/custom_sampling/custom_sampling ${DEFAULT_MODEL_DIR} "Once upon a time" 8)
file(REMOVE ${WORK_DIR}/state.bin)
run(${WORK_DIR}/save_restore/save_restore ${DEFAULT_MODEL_DIR} ${WORK_DIR}/state.bin)
run(${WORK_DIR}/save_restore/save_restore ${DEFAULT_MODEL_DIR} ${WORK_DIR}/state.bin)
if(NOT RUN_OUTPUT MATCHES "restored [0-9]+ tokens")
  message(FATAL_ERROR "save_restore did not restore: ${RUN_OUTPUT}")
endif()
run(${WORK_DIR}/game_loop/game_loop ${DEFAULT_MODEL_DIR} 2)
if(NOT RUN_OUTPUT MATCHES "ticks: [0-9]+ at 60 Hz")
  message(FATAL_ERROR "game_loop printed no tick statistics: ${RUN_OUTPUT}")
endif()
message(STATUS "game_loop: ${RUN_OUTPUT}")
# The installed tool runs too, and finds its installed default model.
run(${prefix}/bin/mimo generate --model ${MODEL_DIR} --tokens 1,2,3 -n 4 --greedy --print-ids)
message(STATUS "installed mimo printed ${RUN_OUTPUT}")
run(${prefix}/bin/mimo generate --prompt "Hello" -n 4 --greedy --print-ids)
