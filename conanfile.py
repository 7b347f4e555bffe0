# Conan 2 recipe of tokensel, a header-only C++20 library.
#   conan create . -pr:a conan/profiles/offline     (Eigen from the system, no remote needed)
#   conan create . -pr:a conan/profiles/offline -o "&:with_cuda=True"   (also tokensel::cuda)
# The package ships tokensel's own CMake package config (share/cmake/tokensel), so
# find_package(tokensel) behaves as after `cmake --install`: targets tokensel::tokensel and,
# with with_cuda, tokensel::cuda. CMakeDeps generates nothing for it (cmake_find_mode none).
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load

required_conan_version = ">=2.0"


class TokenselConan(ConanFile):
    name = "tokensel"
    description = "Training-free visual-token selection for vision-language models (header-only C++20)"
    license = "Apache-2.0"
    topics = ("vision-language-models", "token-pruning", "header-only", "eigen")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    options = {"with_cuda": [True, False], "with_json": [True, False]}
    default_options = {"with_cuda": False, "with_json": False}
    exports_sources = ("CMakeLists.txt", "LICENSE", "README.md", "cmake/*", "include/*",
                       "cuda/CMakeLists.txt", "cuda/tokensel/*")
    no_copy_source = True

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
        self.version = re.search(r"project\(tokensel\s+VERSION\s+([0-9.]+)", text).group(1)

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        self.requires("eigen/3.4.0")
        if self.options.with_json:
            # fitprune_json.hpp and safetensors.hpp only.
            self.requires("nlohmann_json/3.11.2")

    def validate(self):
        if self.settings.get_safe("compiler.cppstd"):
            check_min_cppstd(self, 20)

    def package_id(self):
        # Headers only: the same package for every compiler, build type and architecture; the
        # options stay (with_cuda changes the contents).
        self.info.settings.clear()

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["TOKENSEL_BUILD_TESTS"] = False
        tc.cache_variables["TOKENSEL_BUILD_EXAMPLES"] = False
        tc.cache_variables["TOKENSEL_BUILD_BENCHMARKS"] = False
        tc.cache_variables["TOKENSEL_INSTALL"] = True
        tc.cache_variables["TOKENSEL_WITH_CUDA"] = bool(self.options.with_cuda)
        tc.generate()

    def build(self):
        # Nothing to compile: configuring generates the package config files and install rules.
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        CMake(self).install()
        cuda_targets = os.path.join(self.package_folder, "share", "cmake", "tokensel", "tokenselCudaTargets.cmake")
        if self.options.with_cuda and not os.path.isfile(cuda_targets):
            raise ConanInvalidConfiguration("with_cuda: no tokensel::cuda was configured (no CUDA compiler found, "
                                            "or this source tree has no cuda/ backend)")
        copy(self, "LICENSE", src=self.source_folder, dst=os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        # Use the package's own tokenselConfig.cmake (it finds Eigen3, OpenMP, nlohmann_json and,
        # for the cuda component, CUDAToolkit).
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.builddirs = [os.path.join("share", "cmake", "tokensel")]
        self.cpp_info.set_property("cmake_file_name", "tokensel")
        self.cpp_info.set_property("cmake_target_name", "tokensel::tokensel")
