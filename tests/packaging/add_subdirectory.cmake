# cmake -DSOURCE_DIR= -DWORK_DIR= -DGENERATOR= -DMODEL_DIR= -P add_subdirectory.cmake
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/packaging/add_subdirectory_project -B ${WORK_DIR} -G ${GENERATOR}
          -DCMAKE_BUILD_TYPE=Release -DMIMO_SOURCE_DIR=${SOURCE_DIR}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configure failed: ${out}\n${err}")
endif()
# As a subproject, mimo builds none of its tests, tools or examples.
if(EXISTS ${WORK_DIR}/mimo/tests)
  message(FATAL_ERROR "mimo built its tests inside a host project")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "build failed: ${out}\n${err}")
endif()
execute_process(COMMAND ${WORK_DIR}/quickstart ${MODEL_DIR} 3 RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "quickstart failed: ${out}\n${err}")
endif()
message(STATUS "quickstart printed ${out}")
