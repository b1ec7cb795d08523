# Decides whether the CUDA back end is built and for which architectures.
#
# Architectures: CMAKE_CUDA_ARCHITECTURES if given, else the environment variable
# PCMEKIT_CUDA_ARCHS (same syntax, e.g. "90" or "80-real;90-real;90-virtual"), else a default
# that follows the toolkit: Volta (CUDA < 13 only) and Turing through Hopper, Blackwell with
# CUDA >= 12.8, and PTX for the newest, so that future GPUs JIT-compile.
set(PCMEKIT_WITH_CUDA OFF)
set(PCMEKIT_CUDA_ARCHS_STRING "")

string(TOUPPER "${PCMEKIT_CUDA}" _pcmekit_cuda_mode)
if(NOT _pcmekit_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "PCMEKIT_CUDA must be AUTO, ON or OFF, got '${PCMEKIT_CUDA}'")
endif()

if(NOT _pcmekit_cuda_mode STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      if(DEFINED ENV{PCMEKIT_CUDA_ARCHS} AND NOT "$ENV{PCMEKIT_CUDA_ARCHS}" STREQUAL "")
        set(CMAKE_CUDA_ARCHITECTURES "$ENV{PCMEKIT_CUDA_ARCHS}")
      else()
        # Decided after enable_language, once the toolkit version is known.
        set(_pcmekit_default_archs ON)
        set(CMAKE_CUDA_ARCHITECTURES "90")  # placeholder so enable_language does not probe
      endif()
    endif()
    enable_language(CUDA)
    if(_pcmekit_default_archs)
      # SASS for every architecture the toolkit still supports from Volta on, PTX for the newest
      # (so GPUs newer than the toolkit JIT-compile it). A cubin runs on later minor versions of
      # its major (sm_100 on sm_103, sm_120 on sm_121), so one per family is enough.
      set(_archs)
      if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13.0)
        list(APPEND _archs 70-real)  # Volta (V100); CUDA 13 removed sm_70 and older
      endif()
      list(APPEND _archs 75-real 80-real 86-real 89-real 90-real)  # Turing .. Hopper
      if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
        list(APPEND _archs 100-real 120-real 120-virtual)  # Blackwell (B200, RTX 50)
      else()
        list(APPEND _archs 90-virtual)
      endif()
      set(CMAKE_CUDA_ARCHITECTURES "${_archs}")
    endif()
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(PCMEKIT_WITH_CUDA ON)
    string(REPLACE ";" "," PCMEKIT_CUDA_ARCHS_STRING "${CMAKE_CUDA_ARCHITECTURES}")
    message(STATUS "pcmekit: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(_pcmekit_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "PCMEKIT_CUDA=ON but no CUDA compiler (nvcc) was found; "
                        "set CUDACXX or put nvcc on PATH, or use PCMEKIT_CUDA=AUTO/OFF")
  else()
    message(STATUS "pcmekit: no CUDA compiler found, building the CPU back end only")
  endif()
else()
  message(STATUS "pcmekit: PCMEKIT_CUDA=OFF, building the CPU back end only")
endif()
