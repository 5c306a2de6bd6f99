// Scoring passkey/recall answers through a tokenizer (trainer/eval/evaluate.h):
// the greedy predictions must decode to the answer's digits.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "trainer/eval/evaluate.h"

namespace fs = std::filesystem;
using namespace rt;

namespace {

// 1 + ids, as the evaluation gathers predictions
std::vector<int64_t> as_pred(const std::vector<uint32_t>& ids) {
  std::vector<int64_t> p;
  for (uint32_t id : ids) p.push_back(int64_t(id) + 1);
  return p;
}

TEST(AnswerScoring, BytesNeedsEveryByte) {
  const Tokenizer& tok = bytes_tokenizer();
  const PasskeySample s = make_passkey_sample(300, 0.5, 1, 2);
  std::vector<uint32_t> answer(s.tokens.begin() + s.answer_begin, s.tokens.end());
  ASSERT_EQ(answer.size(), 5u);
  EXPECT_TRUE(answer_right(tok, s.tokens, s.answer_begin, as_pred(answer).data()));
  for (size_t k = 0; k < answer.size(); ++k) {
    std::vector<uint32_t> wrong = answer;
    wrong[k] = wrong[k] == '9' ? '0' : wrong[k] + 1;
    EXPECT_FALSE(answer_right(tok, s.tokens, s.answer_begin, as_pred(wrong).data())) << k;
  }
  std::vector<int64_t> none(answer.size(), 0);  // not predicted (no rank wrote it)
  EXPECT_FALSE(answer_right(tok, s.tokens, s.answer_begin, none.data()));
  std::vector<int64_t> outside = as_pred(answer);
  outside[0] = 256 + answer[0] + 1;  // a model vocab past 256: not a byte
  EXPECT_FALSE(answer_right(tok, s.tokens, s.answer_begin, outside.data()));
}

TEST(AnswerScoring, SentencePieceComparesDecodedDigits) {
  const std::string dir =
      (fs::temp_directory_path() / ("rt_test_scoring_" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  // digits are not in the text: byte fallback encodes them; not splitting
  // digits lets "1" "2" and a merged piece both occur
  const std::string cmd = "spm_train --input=" + std::string(RT_SOURCE_DIR) +
                          "/tests/fixtures/tinyshakespeare_100k.txt --model_prefix=" + dir +
                          "/m --vocab_size=600 --model_type=bpe --byte_fallback=true "
                          "--character_coverage=1 --minloglevel=2 > " + dir + "/log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "spm_train failed (apt-get install sentencepiece)";
  auto tok = load_tokenizer(dir + "/m.model");
  fs::remove_all(dir);
  const PasskeySample s = make_passkey_sample(*tok, 300, 0.5, 1, 2);
  const std::vector<uint32_t> answer(s.tokens.begin() + s.answer_begin, s.tokens.end());
  ASSERT_EQ(tok->decode(answer), s.passkey);
  EXPECT_TRUE(answer_right(*tok, s.tokens, s.answer_begin, as_pred(answer).data()));
  // another key's tokens, of the same count when possible: wrong
  for (const std::string other : {"11111", "98765", "10000"}) {
    const std::vector<uint32_t> ids = tok->encode(other);
    if (ids.size() != answer.size() || other == s.passkey) continue;
    EXPECT_FALSE(answer_right(*tok, s.tokens, s.answer_begin, as_pred(ids).data())) << other;
  }
  // one wrong token: wrong
  std::vector<int64_t> pred = as_pred(answer);
  pred.back() = pred.back() == 1 ? 2 : pred.back() - 1;
  EXPECT_FALSE(answer_right(*tok, s.tokens, s.answer_begin, pred.data()));
  // a token id the tokenizer does not have (model vocab padded past it): wrong
  pred = as_pred(answer);
  pred[0] = tok->vocab_size() + 1;
  EXPECT_FALSE(answer_right(*tok, s.tokens, s.answer_begin, pred.data()));
}

}  // namespace
