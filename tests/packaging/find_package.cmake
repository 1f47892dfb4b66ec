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

file(GLOB examples LIST_DIRECTORIES true ${SOURCE_DIR}/examples/*)
foreach(example ${examples})
  if(NOT EXISTS ${example}/CMakeLists.txt)
    continue()
  endif()
  get_filename_component(name ${example} NAME)
  set(build ${WORK_DIR}/${name})
  run(${CMAKE_COMMAND} -S ${example} -B ${build} -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
      -DCMAKE_PREFIX_PATH=${prefix})
  run(${CMAKE_COMMAND} --build ${build})
  message(STATUS "built example ${name} against ${prefix}")
endforeach()

# The quickstart example runs on the fixture model.
run(${WORK_DIR}/quickstart/quickstart ${MODEL_DIR} 4)
string(REGEX MATCH "^[0-9]+,[0-9]+,[0-9]+,[0-9]+" ids "${RUN_OUTPUT}")
if(NOT ids)
  message(FATAL_ERROR "quickstart printed no ids: ${RUN_OUTPUT}")
endif()
# The installed tool runs too.
run(${prefix}/bin/mimo generate --model ${MODEL_DIR} --tokens 1,2,3 -n 4 --greedy --print-ids)
message(STATUS "installed mimo printed ${RUN_OUTPUT}")
