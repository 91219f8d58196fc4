# Work-around for the ROS 2 wheels on PyPI: their exported *__rosidl_generator_pyExport.cmake files
# name the wheel builder's include directories under /opt/python/..., which do not exist, so CMake's
# generate step fails. Passed as -DCMAKE_PROJECT_INCLUDE=<this file>; at the end of configure it drops
# such entries from every imported target. On a normal ROS install no target has them: a no-op.

function(_vpr_drop_missing_wheel_includes)
  get_property(targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs)
      list(FILTER dirs EXCLUDE REGEX "^/opt/python/")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${dirs}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _vpr_drop_missing_wheel_includes)
