// `ringtrain data prepare INPUTS --out FILE`: tokenize text into a token file.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "trainer/cli/commands.h"

namespace rt::cli {
namespace {

struct PrepareArgs {
  std::vector<std::string> inputs;
  std::string out, tokenizer = "bytes";
  double val_fraction = 0.0;
};

int cmd_prepare(const PrepareArgs& a) {
  const std::string described = load_tokenizer(a.tokenizer)->describe();
  for (const std::string& path : prepare_token_file(a.inputs, a.out, a.tokenizer, a.val_fraction)) {
    TokenData d = read_token_file(path);
    std::cout << "wrote " << path << ": " << d.tokens.size() << " tokens, vocab "
              << d.vocab_size << ", tokenizer " << described << "\n";
  }
  return kExitOk;
}

}  // namespace

Command add_data(CLI::App& app) {
  auto a = std::make_shared<PrepareArgs>();
  auto* data = app.add_subcommand("data", "Data tools");
  data->require_subcommand(1);
  auto* prepare = data->add_subcommand(
      "prepare", "Tokenize text files into a .h5 or .bin file (the .h5 records the tokenizer)");
  prepare->add_option("inputs", a->inputs, "input text files")->required();
  prepare->add_option("--out", a->out, "output token file (.h5 or .bin)")->required();
  prepare->add_option("--tokenizer", a->tokenizer,
                      std::string("bytes (default), or the path of a SentencePiece model "
                                  "(tokenizer.model, or a directory holding one). Supported: ") +
                          kTokenizersSupported);
  prepare->add_option("--val-fraction", a->val_fraction,
                      "hold out the last fraction of the tokens, e.g. 0.1: writes OUT (the "
                      "first 90%) and OUT with .val before its extension (the last 10%, for "
                      "data.val)");
  return {prepare, [a] { return cmd_prepare(*a); }, Ranks::kRank0};
}

}  // namespace rt::cli
