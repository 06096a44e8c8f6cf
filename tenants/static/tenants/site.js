// The pages' only script (a file, as their Content-Security-Policy wants).
// Progressive enhancement: copy buttons. Without JavaScript the text is plain
// to select and copy.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var text = document.getElementById(button.dataset.copy).textContent.trim();
  navigator.clipboard.writeText(text).then(function () {
    var label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  });
});

// Forms that replace data ask first (data-confirm="question"). An inline onsubmit
// would be refused by the pages' Content-Security-Policy.
document.addEventListener("submit", function (event) {
  var question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
