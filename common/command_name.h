// How to spell this program in a hint the user can paste: "ringtrain" when
// that name on PATH is this binary, else its path relative to the current
// directory ("./build/ringtrain" after ./setup.sh), else its absolute path.
#pragma once

#include <string>

namespace rt {

std::string ringtrain_command();

}  // namespace rt
